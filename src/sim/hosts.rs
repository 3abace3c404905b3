//! The cloud-host API (`/v1/pve/open/...`), simple but real: enough hosts, power states and
//! listings for disks to be mounted on and for a client of the host endpoints to be exercised.

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::sim::SimConfig;
use crate::sim::disks;
use crate::sim::envelope::{ApiError, BUSINESS_ERROR};
use crate::sim::params::{self, Object};
use crate::sim::seed;
use crate::sim::state::{World, epoch_ms, random_alnum, unique_id};

/// `useType` 0: billed by the hour.
pub(crate) const PAY_AS_YOU_GO: i64 = 0;
/// `useType` 1: paid for a period in advance.
pub(crate) const PREPAID: i64 = 1;

const HOST_NOT_FOUND: i64 = 1021;
const HOST_BOOTING: i64 = 6000;
const HOST_SHUTTING_DOWN: i64 = 6001;
const TYPE_MISMATCH: i64 = 7005;

/// One cloud host.
pub(crate) struct Host {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) area: i64,
    pub(crate) use_type: i64,
    pub(crate) password: String,
    pub(crate) package_id: String,
    pub(crate) image_id: String,
    pub(crate) created_ms: u64,
    pub(crate) power: Power,
    /// A disk can only be mounted on a host that has been powered on at least once.
    pub(crate) ever_on: bool,
}

/// Power state; `status` as the upstream reports it is derived from this.
pub(crate) enum Power {
    /// 0
    Off,
    /// 1: booting, on from `on_at`.
    Booting { on_at: Instant },
    /// 2
    On,
    /// 4: shutting down, off from `off_at`.
    ShuttingDown { off_at: Instant },
}

impl Host {
    pub(crate) fn is_off(&self) -> bool {
        matches!(self.power, Power::Off)
    }

    fn status(&self) -> i64 {
        match self.power {
            Power::Off => 0,
            Power::Booting { .. } => 1,
            Power::On => 2,
            Power::ShuttingDown { .. } => 4,
        }
    }

    /// The host object; the login password only in the detail (`one`), as upstream.
    fn to_json(&self, with_password: bool) -> Value {
        let mut host = json!({
            "id": self.id,
            "name": self.name,
            "area": self.area,
            "status": self.status(),
            "useType": self.use_type,
            "packageId": self.package_id,
            "imageId": self.image_id,
            "createTime": self.created_ms,
        });
        if with_password {
            host["hostPw"] = Value::String(self.password.clone());
        }
        host
    }

    /// Refuses a power change while one is under way, as upstream (6000, 6001).
    fn ensure_settled(&self) -> Result<(), ApiError> {
        match self.power {
            Power::Booting { .. } => Err(ApiError::new(
                HOST_BOOTING,
                format!("host {} is booting: wait until it is on", self.id),
            )),
            Power::ShuttingDown { .. } => Err(ApiError::new(
                HOST_SHUTTING_DOWN,
                format!("host {} is shutting down: wait until it is off", self.id),
            )),
            Power::Off | Power::On => Ok(()),
        }
    }
}

/// Completes the power changes due by `now`.
pub(crate) fn settle(hosts: &mut [Host], now: Instant) {
    for host in hosts {
        match host.power {
            Power::Booting { on_at } if on_at <= now => {
                host.power = Power::On;
                host.ever_on = true;
            }
            Power::ShuttingDown { off_at } if off_at <= now => host.power = Power::Off,
            _ => {}
        }
    }
}

/// `GET image`.
pub(crate) fn images() -> Value {
    seed::IMAGES.iter().map(seed::Image::to_json).collect()
}

/// `GET packAge/{type}`: the configurations of one billing type (0 pay-as-you-go, 1 prepaid).
pub(crate) fn packages(kind: &str) -> Result<Value, ApiError> {
    let kind = match kind {
        "0" => PAY_AS_YOU_GO,
        "1" => PREPAID,
        _ => return Err(ApiError::bad_param("type must be 0 or 1")),
    };
    Ok(seed::PACKAGES
        .iter()
        .filter(|p| p.use_type == kind)
        .map(seed::Package::to_json)
        .collect())
}

/// `POST createquantity`: a pay-as-you-go host, delivered powered off after its first boot.
pub(crate) fn create_quantity(world: &mut World, body: &Object) -> Result<Value, ApiError> {
    create_host(world, body, PAY_AS_YOU_GO)
}

/// `POST createRent`: a prepaid host for `periodNumber` periods of `periodType` (1 day … 5 year).
pub(crate) fn create_rent(world: &mut World, body: &Object) -> Result<Value, ApiError> {
    let number = params::opt_integer(body, "periodNumber")?;
    if number.is_none_or(|n| n < 1) {
        return Err(ApiError::bad_param(
            "periodNumber is required: a positive integer",
        ));
    }
    let period = params::opt_integer(body, "periodType")?;
    if period.is_none_or(|p| !(1..=5).contains(&p)) {
        return Err(ApiError::bad_param(
            "periodType is required: 1 day, 2 week, 3 month, 4 quarter or 5 year",
        ));
    }
    create_host(world, body, PREPAID)
}

fn create_host(world: &mut World, body: &Object, use_type: i64) -> Result<Value, ApiError> {
    let package_id = params::required_text(body, "packageId")?;
    let image_id = params::required_text(body, "imageId")?;
    let package = seed::PACKAGES
        .iter()
        .find(|p| p.id == package_id)
        .ok_or_else(|| {
            ApiError::new(
                BUSINESS_ERROR,
                format!("no such package {package_id}: see packAge/0 and packAge/1"),
            )
        })?;
    if !seed::IMAGES.iter().any(|i| i.id == image_id) {
        return Err(ApiError::new(
            BUSINESS_ERROR,
            format!("no such image {image_id}: see image"),
        ));
    }
    if package.use_type != use_type {
        return Err(ApiError::new(
            TYPE_MISMATCH,
            format!("package {package_id} is not of this billing type (类型不匹配)"),
        ));
    }
    let id = unique_id(|id| world.host(id).is_some());
    world.hosts.push(Host {
        name: format!("PVE-{id}"),
        id: id.clone(),
        area: package.area,
        use_type,
        password: random_alnum(12),
        package_id: package_id.to_owned(),
        image_id: image_id.to_owned(),
        created_ms: epoch_ms(),
        power: Power::Off,
        ever_on: true,
    });
    Ok(Value::String(id))
}

/// `GET operate/{id}?type=0|1`: powers off (0) or on (1), taking `mount_delay`.
pub(crate) fn operate(
    world: &mut World,
    cfg: &SimConfig,
    now: Instant,
    id: &str,
    query: &str,
) -> Result<Value, ApiError> {
    let power_on = match params::query_integer(query, "type")? {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(ApiError::bad_param("type is required: 0 (off) or 1 (on)")),
    };
    let host = find_mut(world, id)?;
    host.ensure_settled()?;
    // `mount_delay` is capped (see `sim::bounded`), so the additions cannot overflow.
    match (power_on, &host.power) {
        (true, Power::Off) => {
            host.power = Power::Booting {
                on_at: now + cfg.mount_delay,
            }
        }
        (false, Power::On) => {
            host.power = Power::ShuttingDown {
                off_at: now + cfg.mount_delay,
            }
        }
        // Already in the asked-for state: nothing to do, as upstream.
        _ => {}
    }
    Ok(Value::Bool(true))
}

/// `GET reboot/{id}`: a running host goes through booting again.
pub(crate) fn reboot(
    world: &mut World,
    cfg: &SimConfig,
    now: Instant,
    id: &str,
) -> Result<Value, ApiError> {
    let host = find_mut(world, id)?;
    host.ensure_settled()?;
    if host.is_off() {
        return Err(ApiError::new(
            BUSINESS_ERROR,
            format!("host {id} is powered off: power it on with operate?type=1"),
        ));
    }
    // `mount_delay` is capped (see `sim::bounded`), so the addition cannot overflow.
    host.power = Power::Booting {
        on_at: now + cfg.mount_delay,
    };
    Ok(Value::Bool(true))
}

/// `GET one/{id}`: the detail, login password included.
pub(crate) fn one(world: &World, id: &str) -> Result<Value, ApiError> {
    world
        .host(id)
        .map(|h| h.to_json(true))
        .ok_or_else(|| host_not_found(id))
}

/// `GET mypage?page=&pageSize=` (at most 25 a page).
pub(crate) fn page(world: &World, query: &str) -> Result<Value, ApiError> {
    let (page, size) = params::paging(
        params::query_integer(query, "page")?,
        params::query_integer(query, "pageSize")?,
        25,
    )?;
    let items: Vec<Value> = world.hosts[params::window(world.hosts.len(), page, size)]
        .iter()
        .map(|h| h.to_json(false))
        .collect();
    Ok(json!({"data": items, "totalCounts": world.hosts.len()}))
}

/// `DELETE delete/{id}`: the host goes, its disks are detached and wait to be mounted again.
pub(crate) fn delete(world: &mut World, id: &str) -> Result<Value, ApiError> {
    let index = world
        .hosts
        .iter()
        .position(|h| h.id == id)
        .ok_or_else(|| host_not_found(id))?;
    world.hosts.remove(index);
    disks::detach_all(&mut world.disks, id);
    Ok(Value::Bool(true))
}

fn find_mut<'a>(world: &'a mut World, id: &str) -> Result<&'a mut Host, ApiError> {
    world.host_mut(id).ok_or_else(|| host_not_found(id))
}

fn host_not_found(id: &str) -> ApiError {
    ApiError::new(
        HOST_NOT_FOUND,
        format!("host {id} does not exist (机器不存在)"),
    )
}
