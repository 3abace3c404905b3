//! The simulator's starting point: the hosts, images and packages it begins with (and returns to on
//! `/_sim/reset`). The host ids are public so that tests can name the host that provokes each rule.
//!
//! All seeded hosts have the password `demo-host-pw` and `createTime` 1704349228000.

use serde_json::{Value, json};

use crate::sim::hosts::{Host, PAY_AS_YOU_GO, PREPAID, Power};

/// Area 0, powered off, pay-as-you-go, powered on before: a disk in area 0 mounts here.
pub const HOST_AREA0: &str = "hostSouth0";
/// Area 1, powered off, pay-as-you-go, powered on before.
pub const HOST_AREA1: &str = "hostWest01";
/// Area 2, powered off, pay-as-you-go, powered on before.
pub const HOST_AREA2: &str = "hostIntl02";
/// Area 0, powered on: mounting on it gets 220009.
pub const HOST_RUNNING: &str = "hostOnline";
/// Area 0, powered off but never powered on: mounting on it gets 220012.
pub const HOST_NEVER_ON: &str = "hostNewbie";
/// Area 0, powered off, prepaid: mounting on it gets 220017.
pub const HOST_PREPAID: &str = "hostPrepay";

const SEED_TIME_MS: u64 = 1_704_349_228_000;
const SEED_PASSWORD: &str = "demo-host-pw";

/// An operating-system image a host can be created from.
pub(crate) struct Image {
    pub(crate) id: &'static str,
    name: &'static str,
    os: &'static str,
}

impl Image {
    pub(crate) fn to_json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "os": self.os})
    }
}

/// A host configuration; `use_type` says which create endpoint accepts it.
pub(crate) struct Package {
    pub(crate) id: &'static str,
    name: &'static str,
    pub(crate) use_type: i64,
    pub(crate) area: i64,
    cpu: u32,
    memory_gb: u32,
    gpu: &'static str,
    price: f64,
}

impl Package {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.use_type,
            "area": self.area,
            "cpu": self.cpu,
            "memory": self.memory_gb,
            "gpu": self.gpu,
            "price": self.price,
        })
    }
}

pub(crate) const IMAGES: &[Image] = &[
    Image {
        id: "img-win10",
        name: "Windows 10 Pro 64-bit",
        os: "windows",
    },
    Image {
        id: "img-ubuntu2204",
        name: "Ubuntu 22.04 LTS",
        os: "linux",
    },
];

pub(crate) const PACKAGES: &[Package] = &[
    Package {
        id: "pkg-south-3090",
        name: "RTX 3090 / 16 vCPU / 64 GB (South China)",
        use_type: PAY_AS_YOU_GO,
        area: 0,
        cpu: 16,
        memory_gb: 64,
        gpu: "RTX 3090",
        price: 3.5,
    },
    Package {
        id: "pkg-west-3090",
        name: "RTX 3090 / 16 vCPU / 64 GB (West China)",
        use_type: PAY_AS_YOU_GO,
        area: 1,
        cpu: 16,
        memory_gb: 64,
        gpu: "RTX 3090",
        price: 3.2,
    },
    Package {
        id: "pkg-intl-4090",
        name: "RTX 4090 / 24 vCPU / 96 GB (international)",
        use_type: PAY_AS_YOU_GO,
        area: 2,
        cpu: 24,
        memory_gb: 96,
        gpu: "RTX 4090",
        price: 6.0,
    },
    Package {
        id: "pkg-south-3090-rent",
        name: "RTX 3090 / 16 vCPU / 64 GB, prepaid (South China)",
        use_type: PREPAID,
        area: 0,
        cpu: 16,
        memory_gb: 64,
        gpu: "RTX 3090",
        price: 60.0,
    },
];

/// The seeded hosts, in the order `mypage` lists them.
pub(crate) fn hosts() -> Vec<Host> {
    let host = |id: &str, name: &str, area: i64, use_type: i64, power: Power, ever_on: bool| {
        let package = PACKAGES
            .iter()
            .find(|p| p.area == area && p.use_type == use_type)
            .map_or("pkg-south-3090", |p| p.id);
        Host {
            id: id.to_owned(),
            name: name.to_owned(),
            area,
            use_type,
            password: SEED_PASSWORD.to_owned(),
            package_id: package.to_owned(),
            image_id: "img-win10".to_owned(),
            created_ms: SEED_TIME_MS,
            power,
            ever_on,
        }
    };
    vec![
        host(
            HOST_AREA0,
            "render-south-0",
            0,
            PAY_AS_YOU_GO,
            Power::Off,
            true,
        ),
        host(
            HOST_AREA1,
            "render-west-1",
            1,
            PAY_AS_YOU_GO,
            Power::Off,
            true,
        ),
        host(
            HOST_AREA2,
            "render-intl-2",
            2,
            PAY_AS_YOU_GO,
            Power::Off,
            true,
        ),
        host(
            HOST_RUNNING,
            "render-running",
            0,
            PAY_AS_YOU_GO,
            Power::On,
            true,
        ),
        host(
            HOST_NEVER_ON,
            "render-new",
            0,
            PAY_AS_YOU_GO,
            Power::Off,
            false,
        ),
        host(HOST_PREPAID, "render-prepaid", 0, PREPAID, Power::Off, true),
    ]
}
