//! The compiled routes and the table one config runs with: classifying a request by method and
//! raw path, looking a route up by name, iterating over the routes in index order.

use std::sync::Arc;

use http::Method;

use super::route::{Caching, KeySource, Kind, Route, SpendBody, Stale};
use super::route::{RouteSpec, Verb};
use crate::config::error::ConfigError;

/// A compiled route's spec with the facts most routes share; the statics below set the rest.
const fn spec(
    index: usize,
    name: &'static str,
    method: Verb,
    prefix: &'static str,
    param: Option<&'static str>,
    kind: Kind,
) -> RouteSpec {
    RouteSpec {
        name,
        method,
        prefix,
        param,
        suffix: "",
        kind,
        query: &[],
        body: None,
        key: KeySource::PathAndQuery,
        caching: match kind {
            Kind::Read => Caching::Off,
            _ => Caching::Never,
        },
        disk_status: false,
        invalidates: &[],
        local_only: false,
        collapses: matches!(kind, Kind::Mutation),
        index,
        source: None,
    }
}

use Kind::{Mutation, Read, Spend};
use Stale::{SameId, WholeRoute};

static DISK_INFO: RouteSpec = RouteSpec {
    caching: Caching::On,
    disk_status: true,
    ..spec(
        0,
        "disk.info",
        Verb::Get,
        "/v1/PveMachineHardDisk/open/info/",
        Some("id"),
        Read,
    )
};
static DISK_CREATE: RouteSpec = RouteSpec {
    body: Some(SpendBody::Disk),
    invalidates: &[
        WholeRoute(Route::DiskList),
        WholeRoute(Route::DiskMemoryTotal),
    ],
    ..spec(
        1,
        "disk.create",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/create",
        None,
        Spend,
    )
};
static DISK_LIST: RouteSpec = RouteSpec {
    key: KeySource::Body,
    ..spec(
        2,
        "disk.list",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/getList",
        None,
        Read,
    )
};
static DISK_MOUNT: RouteSpec = RouteSpec {
    invalidates: &[SameId(Route::DiskInfo), WholeRoute(Route::DiskList)],
    ..spec(
        3,
        "disk.mount",
        Verb::Post,
        "/v1/PveMachineHardDisk/open/pveCreate",
        None,
        Mutation,
    )
};
static DISK_UPDATE_STATUS: RouteSpec = RouteSpec {
    invalidates: &[
        SameId(Route::DiskInfo),
        WholeRoute(Route::DiskList),
        WholeRoute(Route::DiskMemoryTotal),
    ],
    ..spec(
        4,
        "disk.update_status",
        Verb::Put,
        "/v1/PveMachineHardDisk/open/updateStatus",
        None,
        Mutation,
    )
};
static DISK_MEMORY_TOTAL: RouteSpec = spec(
    5,
    "disk.memory_total",
    Verb::Get,
    "/v1/PveMachineHardDisk/open/memoryTotal/",
    Some("area"),
    Read,
);
static HOST_IMAGE: RouteSpec = spec(6, "host.image", Verb::Get, "/v1/pve/open/image", None, Read);
static HOST_PACKAGE: RouteSpec = spec(
    7,
    "host.package",
    Verb::Get,
    "/v1/pve/open/packAge/",
    Some("type"),
    Read,
);
static HOST_CREATE_QUANTITY: RouteSpec = RouteSpec {
    body: Some(SpendBody::HostQuantity),
    invalidates: &[WholeRoute(Route::HostPage)],
    ..spec(
        8,
        "host.create_quantity",
        Verb::Post,
        "/v1/pve/open/createquantity",
        None,
        Spend,
    )
};
static HOST_CREATE_RENT: RouteSpec = RouteSpec {
    body: Some(SpendBody::HostRent),
    invalidates: &[WholeRoute(Route::HostPage)],
    ..spec(
        9,
        "host.create_rent",
        Verb::Post,
        "/v1/pve/open/createRent",
        None,
        Spend,
    )
};
static HOST_OPERATE: RouteSpec = RouteSpec {
    query: &["type"],
    invalidates: &[SameId(Route::HostOne), WholeRoute(Route::HostPage)],
    ..spec(
        10,
        "host.operate",
        Verb::Get,
        "/v1/pve/open/operate/",
        Some("id"),
        Mutation,
    )
};
static HOST_REBOOT: RouteSpec = RouteSpec {
    invalidates: &[SameId(Route::HostOne), WholeRoute(Route::HostPage)],
    ..spec(
        11,
        "host.reboot",
        Verb::Get,
        "/v1/pve/open/reboot/",
        Some("id"),
        Mutation,
    )
};
static HOST_ONE: RouteSpec = RouteSpec {
    local_only: true,
    ..spec(
        12,
        "host.one",
        Verb::Get,
        "/v1/pve/open/one/",
        Some("id"),
        Read,
    )
};
static HOST_PAGE: RouteSpec = RouteSpec {
    query: &["page", "pageSize"],
    ..spec(
        13,
        "host.page",
        Verb::Get,
        "/v1/pve/open/mypage",
        None,
        Read,
    )
};
static HOST_DELETE: RouteSpec = RouteSpec {
    // Deleting a host unmounts its disks.
    invalidates: &[
        SameId(Route::HostOne),
        WholeRoute(Route::HostPage),
        WholeRoute(Route::DiskInfo),
        WholeRoute(Route::DiskList),
    ],
    ..spec(
        14,
        "host.delete",
        Verb::Delete,
        "/v1/pve/open/delete/",
        Some("id"),
        Mutation,
    )
};

/// The compiled routes, in index order.
pub(super) static COMPILED: [Route; 15] = [
    Route::DiskInfo,
    Route::DiskCreate,
    Route::DiskList,
    Route::DiskMount,
    Route::DiskUpdateStatus,
    Route::DiskMemoryTotal,
    Route::HostImage,
    Route::HostPackage,
    Route::HostCreateQuantity,
    Route::HostCreateRent,
    Route::HostOperate,
    Route::HostReboot,
    Route::HostOne,
    Route::HostPage,
    Route::HostDelete,
];

/// The compiled routes, named as the variants they once were so that call sites read the same.
#[allow(non_upper_case_globals)]
impl Route {
    pub(crate) const DiskInfo: Route = Route(&DISK_INFO);
    pub const DiskCreate: Route = Route(&DISK_CREATE);
    pub(crate) const DiskList: Route = Route(&DISK_LIST);
    pub(crate) const DiskMount: Route = Route(&DISK_MOUNT);
    pub(crate) const DiskUpdateStatus: Route = Route(&DISK_UPDATE_STATUS);
    pub(crate) const DiskMemoryTotal: Route = Route(&DISK_MEMORY_TOTAL);
    pub(crate) const HostImage: Route = Route(&HOST_IMAGE);
    pub(crate) const HostPackage: Route = Route(&HOST_PACKAGE);
    pub const HostCreateQuantity: Route = Route(&HOST_CREATE_QUANTITY);
    pub const HostCreateRent: Route = Route(&HOST_CREATE_RENT);
    pub(crate) const HostOperate: Route = Route(&HOST_OPERATE);
    pub(crate) const HostReboot: Route = Route(&HOST_REBOOT);
    pub(crate) const HostOne: Route = Route(&HOST_ONE);
    pub(crate) const HostPage: Route = Route(&HOST_PAGE);
    pub(crate) const HostDelete: Route = Route(&HOST_DELETE);
}

impl Route {
    /// The compiled routes (a config's own are in its [`RouteTable`]).
    pub fn all() -> impl Iterator<Item = Route> {
        COMPILED.iter().copied()
    }
}

/// The routes one config runs with: the compiled ones, then its `[[routes]]`.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    pub(super) routes: Vec<Route>,
}

impl Default for RouteTable {
    fn default() -> RouteTable {
        RouteTable {
            routes: COMPILED.to_vec(),
        }
    }
}

/// Paths the gateway keeps for itself or never forwards, as leading segments: `/_gateway` and
/// `/v1/auth`, and everything under them.
pub(super) const RESERVED: [&[&str]; 2] = [&["_gateway"], &["v1", "auth"]];

/// Whether a request's raw path is under a reserved prefix, in any letter case. The route table
/// never matches one, whatever its routes: the config check refuses such templates, and this
/// keeps it so should that check ever miss one.
fn is_reserved_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    RESERVED.iter().any(|p| {
        let mut segs = rest.split('/');
        p.iter()
            .all(|x| segs.next().is_some_and(|s| s.eq_ignore_ascii_case(x)))
    })
}

impl RouteTable {
    pub(crate) fn by_name(&self, name: &str) -> Option<Route> {
        self.routes.iter().copied().find(|r| r.as_str() == name)
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.routes.iter().map(|r| r.as_str()).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Route> + '_ {
        self.routes.iter().copied()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }

    /// Classifies a request by method and raw (still percent-encoded) path. Literal segments
    /// match in their own case only, and a path under `/_gateway` or `/v1/auth` is no route in
    /// any case.
    pub(crate) fn classify(&self, method: &Method, path: &str) -> Option<RouteMatch> {
        if is_reserved_path(path) {
            return None;
        }
        self.routes.iter().find_map(|r| {
            if r.method() != method {
                return None;
            }
            let param = r.matches(path)?;
            Some(RouteMatch {
                route: *r,
                param: param.map(Arc::from),
            })
        })
    }

    /// An unknown route name as a config error naming `key`.
    pub(crate) fn unknown(&self, key: String, name: &str) -> ConfigError {
        ConfigError::Invalid {
            key,
            message: format!("unknown route {name:?}; expected one of {:?}", self.names()),
        }
    }
}

/// Classifies a request against the compiled routes only.
pub fn classify(method: &Method, path: &str) -> Option<RouteMatch> {
    static TABLE: std::sync::LazyLock<RouteTable> = std::sync::LazyLock::new(RouteTable::default);
    TABLE.classify(method, path)
}

/// A classified request: which route, and its path parameter (disk id, host id, area, type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: Route,
    /// Shared, since it often becomes part of a cache key as it is.
    pub param: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_classifies_its_own_example() {
        let table = RouteTable::default();
        for (i, r) in Route::all().enumerate() {
            let m = classify(r.method(), &r.example_path("AbC123xyz9")).unwrap();
            assert_eq!(m.route, r);
            assert_eq!(table.by_name(r.as_str()), Some(r));
            assert_eq!(r.index(), i, "{r}");
        }
        assert_eq!(table.by_name("disk.nope"), None);
    }

    /// Every compiled route's facts, as the tables of docs/ state them.
    #[test]
    fn compiled_facts() {
        let row = |r: Route| {
            let stale: Vec<String> = r
                .invalidates()
                .iter()
                .map(|s| match s {
                    Stale::SameId(x) => format!("{x}:id"),
                    Stale::WholeRoute(x) => x.to_string(),
                })
                .collect();
            format!(
                "{} {} {} {:?} q={:?} cache={} body_keyed={} local={} collapses={} spend={:?} stale={}",
                r,
                r.method(),
                r.path_template(),
                r.kind(),
                r.query_params(),
                match r.caching() {
                    Caching::Never => "never",
                    Caching::Off => "off",
                    Caching::On => "on",
                    Caching::Table(_) => "table",
                },
                r.body_keyed(),
                r.local_only(),
                r.collapses_in_flight(),
                r.spend_body(),
                stale.join(","),
            )
        };
        let got: Vec<String> = Route::all().map(row).collect();
        let want = [
            "disk.info GET /v1/PveMachineHardDisk/open/info/{id} Read q=[] cache=on body_keyed=false local=false collapses=false spend=None stale=",
            "disk.create POST /v1/PveMachineHardDisk/open/create Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(Disk) stale=disk.list,disk.memory_total",
            "disk.list POST /v1/PveMachineHardDisk/open/getList Read q=[] cache=off body_keyed=true local=false collapses=false spend=None stale=",
            "disk.mount POST /v1/PveMachineHardDisk/open/pveCreate Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=disk.info:id,disk.list",
            "disk.update_status PUT /v1/PveMachineHardDisk/open/updateStatus Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=disk.info:id,disk.list,disk.memory_total",
            "disk.memory_total GET /v1/PveMachineHardDisk/open/memoryTotal/{area} Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.image GET /v1/pve/open/image Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.package GET /v1/pve/open/packAge/{type} Read q=[] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.create_quantity POST /v1/pve/open/createquantity Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(HostQuantity) stale=host.page",
            "host.create_rent POST /v1/pve/open/createRent Spend q=[] cache=never body_keyed=false local=false collapses=false spend=Some(HostRent) stale=host.page",
            "host.operate GET /v1/pve/open/operate/{id} Mutation q=[\"type\"] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page",
            "host.reboot GET /v1/pve/open/reboot/{id} Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page",
            "host.one GET /v1/pve/open/one/{id} Read q=[] cache=off body_keyed=false local=true collapses=false spend=None stale=",
            "host.page GET /v1/pve/open/mypage Read q=[\"page\", \"pageSize\"] cache=off body_keyed=false local=false collapses=false spend=None stale=",
            "host.delete DELETE /v1/pve/open/delete/{id} Mutation q=[] cache=never body_keyed=false local=false collapses=true spend=None stale=host.one:id,host.page,disk.info,disk.list",
        ];
        assert_eq!(got, want);
        assert!(Route::DiskInfo.has_disk_status());
        assert_eq!(
            Route::all().filter(|r| r.has_disk_status()).count(),
            1,
            "only disk.info answers a disk status"
        );
    }

    /// Were a route under a reserved path ever in a table (the config check refuses it), the
    /// table would still match no request there, in any letter case.
    #[test]
    fn the_table_never_matches_a_reserved_path() {
        let unchecked = |method, prefix, param, suffix| {
            Route(Box::leak(Box::new(RouteSpec {
                suffix,
                ..spec(15, "test.unchecked", method, prefix, param, Kind::Mutation)
            })))
        };
        let mut t = RouteTable::default();
        t.routes
            .push(unchecked(Verb::Get, "/", Some("x"), "/token"));
        t.routes
            .push(unchecked(Verb::Post, "/v1/", Some("x"), "/getToken"));
        for (m, p) in [
            (Method::GET, "/_gateway/token"),
            (Method::GET, "/_GATEWAY/token"),
            (Method::POST, "/v1/auth/getToken"),
            (Method::POST, "/V1/AUTH/getToken"),
        ] {
            assert!(t.classify(&m, p).is_none(), "{m} {p}");
        }
        // The same routes elsewhere are matched: the refusal is the reserved path's.
        assert!(t.classify(&Method::GET, "/other/token").is_some());
        assert!(t.classify(&Method::POST, "/v1/other/getToken").is_some());
    }

    #[test]
    fn wrong_method_is_not_a_route() {
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/info/abc").is_none());
        assert!(classify(&Method::GET, "/v1/PveMachineHardDisk/open/create").is_none());
    }

    #[test]
    fn escapes_match_nothing() {
        for p in [
            "/v1/auth/getToken",
            "/v1/PveMachineHardDisk/open/info/../../auth/getToken",
            "/v1/PveMachineHardDisk/open/info/..",
            "/v1/PveMachineHardDisk/open/info/a%2Fb",
            "/v1/PveMachineHardDisk/open/info/a%2fb",
            "/v1/PveMachineHardDisk/open/info/a/b",
            "/v1/PveMachineHardDisk/open/info/",
            "/v1/PveMachineHardDisk/open/info/a\\b",
            "//evil.example/v1/PveMachineHardDisk/open/info/a",
            "/v1/PveMachineHardDisk/open//info/a",
            "/v1/PveMachineHardDisk/open/./info/a",
            "/v1/PveMachineHardDisk/open/info/%2e%2e",
        ] {
            assert!(classify(&Method::GET, p).is_none(), "{p}");
        }
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/create/").is_none());
        assert!(classify(&Method::POST, "/v1/PveMachineHardDisk/open/create/x").is_none());
    }

    #[test]
    fn param_is_captured() {
        let m = classify(&Method::GET, "/v1/PveMachineHardDisk/open/info/PgOiNCqaJQ").unwrap();
        assert_eq!(m.param.as_deref(), Some("PgOiNCqaJQ"));
    }
}
