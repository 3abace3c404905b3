//! The cloud-disk API (`/v1/PveMachineHardDisk/open/...`): disks, their life cycle and every
//! documented validation rule with its code.

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::sim::SimConfig;
use crate::sim::envelope::ApiError;
use crate::sim::hosts::{Host, PAY_AS_YOU_GO};
use crate::sim::params::{self, Object};
use crate::sim::state::{World, epoch_ms, unique_id};

const DISK_NOT_FOUND: i64 = 220001;
const DISK_ALREADY_MOUNTED: i64 = 220002;
const DISK_ALREADY_UNMOUNTED: i64 = 220006;
const UNMOUNT_FAILED: i64 = 220007;
const HOST_NOT_OFF: i64 = 220009;
const HOST_DISK_LIMIT: i64 = 220010;
const HOST_NEVER_ON: i64 = 220012;
const SIZE_TOO_SMALL: i64 = 220013;
const SIZE_TOO_LARGE: i64 = 220014;
const HOST_ID_MISSING: i64 = 220015;
const HOST_NOT_FOUND: i64 = 220016;
const HOST_NOT_PAY_AS_YOU_GO: i64 = 220017;
const AREA_MISMATCH: i64 = 220018;
const BAD_IS_MOUNT: i64 = 220020;
const DESTROY_NOT_IDLE: i64 = 220022;
/// Counted apart in `/_sim/stats` as `tooFrequent`.
pub(crate) const TOO_FREQUENT: i64 = 220025;

const MIN_GB: i64 = 20;
const MAX_GB: i64 = 20480;
/// How many disks one host carries at most; also the number of `scsiN` slots.
const HOST_SLOTS: u32 = 30;
/// The price the upstream's example shows: 0.02 for 20 GB.
const PRICE_PER_GB: f64 = 0.001;
/// Areas are 0 South China, 1 West China, 2 international.
const AREAS: std::ops::RangeInclusive<i64> = 0..=2;

/// One cloud disk.
pub(crate) struct Disk {
    id: String,
    area: i64,
    memory: i64,
    /// The host it is attached to (status 1 and 2 only).
    mount: Option<Mount>,
    /// `isMount`: whether it was ever mounted.
    ever_mounted: bool,
    phase: Phase,
    created_ms: u64,
}

/// Where a disk is attached.
struct Mount {
    host_id: String,
    host_name: String,
    /// The host's device key for the disk, `scsi1`..`scsi30`.
    key: u32,
}

/// The life cycle; `status` as the upstream reports it is derived from this.
enum Phase {
    /// 0: waiting to be mounted.
    Idle,
    /// 1: mounting, in use from `ready_at` on.
    Mounting { ready_at: Instant },
    /// 2: in use.
    InUse,
    /// 4: being destroyed, gone from `gone_at` on.
    Destroying { gone_at: Instant },
}

impl Disk {
    fn status(&self) -> i64 {
        match self.phase {
            Phase::Idle => 0,
            Phase::Mounting { .. } => 1,
            Phase::InUse => 2,
            Phase::Destroying { .. } => 4,
        }
    }

    /// The upstream's disk object. Types follow its documented example, mixed as they are:
    /// `area`, `useType` and `status` are strings, `isMount`, `memory` and `amount` numbers.
    fn to_json(&self, uuid: &str) -> Value {
        let mount = self.mount.as_ref();
        json!({
            "id": self.id,
            "uuid": uuid,
            "name": format!("HD-{}", self.id),
            "pveId": mount.map(|m| m.host_id.as_str()),
            "pveName": mount.map(|m| m.host_name.as_str()),
            "isMount": i64::from(self.ever_mounted),
            "pveKey": mount.map(|m| format!("scsi{}", m.key)),
            "bus": "scsi",
            "area": self.area.to_string(),
            "memory": self.memory,
            "useType": PAY_AS_YOU_GO.to_string(),
            "amount": self.memory as f64 * PRICE_PER_GB,
            "status": self.status().to_string(),
            "createTime": self.created_ms,
        })
    }

    /// Starts mounting on `mount`'s host; status 1 now, 2 after `mount_delay`.
    fn mount(&mut self, mount: Mount, cfg: &SimConfig, now: Instant) {
        self.mount = Some(mount);
        self.ever_mounted = true;
        // `mount_delay` is capped (see `sim::bounded`), so the addition cannot overflow.
        self.phase = Phase::Mounting {
            ready_at: now + cfg.mount_delay,
        };
    }
}

/// Completes the mounts and destructions due by `now`.
pub(crate) fn settle(disks: &mut Vec<Disk>, now: Instant) {
    disks.retain(|d| !matches!(d.phase, Phase::Destroying { gone_at } if gone_at <= now));
    for disk in disks.iter_mut() {
        if let Phase::Mounting { ready_at } = disk.phase
            && ready_at <= now
        {
            disk.phase = Phase::InUse;
        }
    }
}

/// Detaches every disk from a deleted host; they go back to waiting to be mounted.
pub(crate) fn detach_all(disks: &mut [Disk], host_id: &str) {
    for disk in disks {
        if disk.mount.as_ref().is_some_and(|m| m.host_id == host_id) {
            disk.mount = None;
            disk.phase = Phase::Idle;
        }
    }
}

/// `POST create`.
pub(crate) fn create(
    world: &mut World,
    cfg: &SimConfig,
    now: Instant,
    body: &Object,
) -> Result<Value, ApiError> {
    let area = area_param(body)?;
    let memory = params::field(body, "memory")
        .and_then(params::integer)
        .ok_or_else(|| ApiError::bad_param("memory is required: the size in GB, an integer"))?;
    if memory < MIN_GB {
        return Err(ApiError::new(
            SIZE_TOO_SMALL,
            format!("disk size below {MIN_GB} GB (云硬盘内存小于20G)"),
        ));
    }
    if memory > MAX_GB {
        return Err(ApiError::new(
            SIZE_TOO_LARGE,
            format!("disk size above {MAX_GB} GB (云硬盘内存超过上限)"),
        ));
    }
    let mount = match params::field(body, "isMount").and_then(params::integer_like) {
        Some(0) => None,
        Some(1) => Some(mount_target(world, params::field(body, "pveId"), area)?),
        _ => {
            return Err(ApiError::new(
                BAD_IS_MOUNT,
                "isMount is required: 0 (do not mount) or 1 (mount on pveId)",
            ));
        }
    };
    if let Some(last) = world.last_create
        && !cfg.create_min_interval.is_zero()
        && now.saturating_duration_since(last) < cfg.create_min_interval
    {
        return Err(ApiError::new(
            TOO_FREQUENT,
            "create request timed out: requests too frequent, try again later (创建请求超时,请求过于频繁,请稍后再试)",
        ));
    }
    world.last_create = Some(now);
    let id = unique_id(|id| world.disks.iter().any(|d| d.id == id));
    let mut disk = Disk {
        id: id.clone(),
        area,
        memory,
        mount: None,
        ever_mounted: false,
        phase: Phase::Idle,
        created_ms: epoch_ms(),
    };
    if let Some(mount) = mount {
        disk.mount(mount, cfg, now);
    }
    world.disks.push(disk);
    Ok(Value::String(id))
}

/// `GET info/{id}`.
pub(crate) fn info(world: &World, uuid: &str, id: &str) -> Result<Value, ApiError> {
    find(world, id).map(|d| d.to_json(uuid))
}

/// `POST getList`: paged, optionally filtered by `pveId`, `area`, `useType`, `status`.
pub(crate) fn list(world: &World, uuid: &str, body: &Object) -> Result<Value, ApiError> {
    let (page, size) = params::paging(
        params::opt_integer(body, "page")?,
        params::opt_integer(body, "pageSize")?,
        100,
    )?;
    let pve_id = match params::field(body, "pveId") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| ApiError::bad_param("pveId must be a string"))?,
        ),
    };
    let area = params::opt_integer(body, "area")?;
    let use_type = params::opt_integer(body, "useType")?;
    let status = params::opt_integer(body, "status")?;
    let matching: Vec<&Disk> = world
        .disks
        .iter()
        .filter(|d| pve_id.is_none_or(|p| d.mount.as_ref().is_some_and(|m| m.host_id == p)))
        .filter(|d| area.is_none_or(|a| d.area == a))
        .filter(|_| use_type.is_none_or(|u| u == PAY_AS_YOU_GO))
        .filter(|d| status.is_none_or(|s| d.status() == s))
        .collect();
    let page_items: Vec<Value> = matching[params::window(matching.len(), page, size)]
        .iter()
        .map(|d| d.to_json(uuid))
        .collect();
    Ok(json!({"data": page_items, "totalCounts": matching.len()}))
}

/// `POST pveCreate`: mounts an idle disk on a host.
pub(crate) fn mount(
    world: &mut World,
    cfg: &SimConfig,
    now: Instant,
    body: &Object,
) -> Result<Value, ApiError> {
    let id = params::required_text(body, "id")?;
    let disk = find(world, id)?;
    if disk.status() != 0 {
        return Err(ApiError::new(
            DISK_ALREADY_MOUNTED,
            format!(
                "the disk is not waiting to be mounted (status {}): unmount it first (硬盘已挂载)",
                disk.status()
            ),
        ));
    }
    let mount = mount_target(world, params::field(body, "pveId"), disk.area)?;
    find_mut(world, id)?.mount(mount, cfg, now);
    Ok(Value::Bool(true))
}

/// `PUT updateStatus`: `"0"` unmounts (at once), `"5"` destroys (status 4, then gone).
pub(crate) fn update_status(
    world: &mut World,
    cfg: &SimConfig,
    now: Instant,
    body: &Object,
) -> Result<Value, ApiError> {
    let id = params::required_text(body, "id")?;
    let target = params::field(body, "status").and_then(params::integer_like);
    if !matches!(target, Some(0 | 5)) {
        return Err(ApiError::bad_param(
            "status is required: \"0\" (unmount) or \"5\" (destroy)",
        ));
    }
    let disk = find(world, id)?;
    let host_on = disk
        .mount
        .as_ref()
        .and_then(|m| world.host(&m.host_id))
        .is_some_and(|h| !h.is_off());
    let disk = find_mut(world, id)?;
    match (target, &disk.phase) {
        (Some(0), Phase::Idle) => Err(ApiError::new(
            DISK_ALREADY_UNMOUNTED,
            "the disk is already unmounted (硬盘已卸载)",
        )),
        (Some(0), Phase::InUse) if host_on => Err(ApiError::new(
            HOST_NOT_OFF,
            "the host is not powered off: power it off before unmounting (主机未关机)",
        )),
        (Some(0), Phase::InUse) => {
            disk.mount = None;
            disk.phase = Phase::Idle;
            Ok(Value::Bool(true))
        }
        (Some(0), _) => Err(ApiError::new(
            UNMOUNT_FAILED,
            format!(
                "unmount failed: the disk is busy (status {}), retry later (卸载失败)",
                disk.status()
            ),
        )),
        (_, Phase::Idle) => {
            // `mount_delay` is capped (see `sim::bounded`), so the addition cannot overflow.
            disk.phase = Phase::Destroying {
                gone_at: now + cfg.mount_delay,
            };
            Ok(Value::Bool(true))
        }
        (_, _) => Err(ApiError::new(
            DESTROY_NOT_IDLE,
            format!(
                "only a disk waiting to be mounted (status 0) can be destroyed; this one has status {}",
                disk.status()
            ),
        )),
    }
}

/// `GET memoryTotal/{area}`: GB held in an area, disks being destroyed excluded.
pub(crate) fn memory_total(world: &World, area: &str) -> Result<Value, ApiError> {
    let area = area
        .parse::<i64>()
        .ok()
        .filter(|a| AREAS.contains(a))
        .ok_or_else(|| ApiError::bad_param("area must be 0, 1 or 2"))?;
    let memory: i64 = world
        .disks
        .iter()
        .filter(|d| d.area == area && !matches!(d.phase, Phase::Destroying { .. }))
        .map(|d| d.memory)
        .fold(0, i64::saturating_add);
    Ok(json!({ "memory": memory }))
}

/// Reads `area`: an integer or numeric string in 0..=2, else 1007.
fn area_param(body: &Object) -> Result<i64, ApiError> {
    params::field(body, "area")
        .and_then(params::integer_like)
        .filter(|a| AREAS.contains(a))
        .ok_or_else(|| ApiError::bad_param("area is required: 0, 1 or 2"))
}

fn find<'a>(world: &'a World, id: &str) -> Result<&'a Disk, ApiError> {
    world
        .disks
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| disk_not_found(id))
}

fn find_mut<'a>(world: &'a mut World, id: &str) -> Result<&'a mut Disk, ApiError> {
    world
        .disks
        .iter_mut()
        .find(|d| d.id == id)
        .ok_or_else(|| disk_not_found(id))
}

fn disk_not_found(id: &str) -> ApiError {
    ApiError::new(
        DISK_NOT_FOUND,
        format!("disk {id} does not exist (云硬盘不存在)"),
    )
}

/// Checks that a disk in `area` may be mounted on host `pve_id`, in the upstream's order, and
/// picks the device slot it will get.
fn mount_target(world: &World, pve_id: Option<&Value>, area: i64) -> Result<Mount, ApiError> {
    let pve_id = pve_id
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                HOST_ID_MISSING,
                "pveId is required to mount: the id of a powered-off host (主机实例ID错误)",
            )
        })?;
    let host: &Host = world.host(pve_id).ok_or_else(|| {
        ApiError::new(
            HOST_NOT_FOUND,
            format!("host {pve_id} does not exist (主机实例不存在)"),
        )
    })?;
    if !host.is_off() {
        return Err(ApiError::new(
            HOST_NOT_OFF,
            format!("host {pve_id} is not powered off: power it off first (主机未关机)"),
        ));
    }
    if !host.ever_on {
        return Err(ApiError::new(
            HOST_NEVER_ON,
            format!(
                "host {pve_id} was never powered on: power it on and off once first (主机未开机)"
            ),
        ));
    }
    let used: Vec<u32> = world
        .disks
        .iter()
        .filter_map(|d| d.mount.as_ref())
        .filter(|m| m.host_id == pve_id)
        .map(|m| m.key)
        .collect();
    let key = (1..=HOST_SLOTS)
        .find(|k| !used.contains(k))
        .ok_or_else(|| {
            ApiError::new(
                HOST_DISK_LIMIT,
                format!("host {pve_id} already carries {HOST_SLOTS} disks (主机挂载硬盘限制)"),
            )
        })?;
    if host.use_type != PAY_AS_YOU_GO {
        return Err(ApiError::new(
            HOST_NOT_PAY_AS_YOU_GO,
            format!("host {pve_id} is not pay-as-you-go (主机不是按量付费)"),
        ));
    }
    if host.area != area {
        return Err(ApiError::new(
            AREA_MISMATCH,
            format!(
                "host {pve_id} is in area {}, the disk in area {area}: they must match (硬盘与主机区域不一致)",
                host.area
            ),
        ));
    }
    Ok(Mount {
        host_id: host.id.clone(),
        host_name: host.name.clone(),
        key,
    })
}
