//! The upstream API's routes: which endpoint a request addresses, the token check, and the call of
//! its handler.

use http::{HeaderMap, Method};
use serde_json::Value;
use tokio::time::Instant;

use crate::sim::SimConfig;
use crate::sim::auth::{self, TOKEN_HEADER};
use crate::sim::disks::{self, TOO_FREQUENT};
use crate::sim::envelope::{ApiError, Reply};
use crate::sim::hosts;
use crate::sim::params;
use crate::sim::state::{Shared, State};

/// An API endpoint, also the key of its counter in `/_sim/stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    GetToken,
    Create,
    Info,
    GetList,
    PveCreate,
    UpdateStatus,
    MemoryTotal,
    Image,
    PackAge,
    CreateQuantity,
    CreateRent,
    Operate,
    Reboot,
    One,
    Mypage,
    Delete,
    Balance,
}

impl Call {
    /// Every endpoint, in the order of the `Call as usize` indices.
    pub(super) const ALL: [Call; 17] = [
        Call::GetToken,
        Call::Create,
        Call::Info,
        Call::GetList,
        Call::PveCreate,
        Call::UpdateStatus,
        Call::MemoryTotal,
        Call::Image,
        Call::PackAge,
        Call::CreateQuantity,
        Call::CreateRent,
        Call::Operate,
        Call::Reboot,
        Call::One,
        Call::Mypage,
        Call::Delete,
        Call::Balance,
    ];

    /// The name in `/_sim/stats`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Call::GetToken => "getToken",
            Call::Create => "create",
            Call::Info => "info",
            Call::GetList => "getList",
            Call::PveCreate => "pveCreate",
            Call::UpdateStatus => "updateStatus",
            Call::MemoryTotal => "memoryTotal",
            Call::Image => "image",
            Call::PackAge => "packAge",
            Call::CreateQuantity => "createQuantity",
            Call::CreateRent => "createRent",
            Call::Operate => "operate",
            Call::Reboot => "reboot",
            Call::One => "one",
            Call::Mypage => "mypage",
            Call::Delete => "delete",
            Call::Balance => "balance",
        }
    }
}

/// A request resolved to its endpoint; `param` is the trailing path segment where the endpoint
/// takes one (`info/{id}`), else empty.
pub(crate) struct Route<'a> {
    pub(crate) call: Call,
    pub(crate) param: &'a str,
}

/// Method, path and endpoint. A path ending in `/` takes one more non-empty segment.
static ROUTES: [(Method, &str, Call); 17] = [
    (Method::POST, "/v1/auth/getToken", Call::GetToken),
    (
        Method::POST,
        "/v1/PveMachineHardDisk/open/create",
        Call::Create,
    ),
    (Method::GET, "/v1/PveMachineHardDisk/open/info/", Call::Info),
    (
        Method::POST,
        "/v1/PveMachineHardDisk/open/getList",
        Call::GetList,
    ),
    (
        Method::POST,
        "/v1/PveMachineHardDisk/open/pveCreate",
        Call::PveCreate,
    ),
    (
        Method::PUT,
        "/v1/PveMachineHardDisk/open/updateStatus",
        Call::UpdateStatus,
    ),
    (
        Method::GET,
        "/v1/PveMachineHardDisk/open/memoryTotal/",
        Call::MemoryTotal,
    ),
    (Method::GET, "/v1/pve/open/image", Call::Image),
    (Method::GET, "/v1/pve/open/packAge/", Call::PackAge),
    (
        Method::POST,
        "/v1/pve/open/createquantity",
        Call::CreateQuantity,
    ),
    (Method::POST, "/v1/pve/open/createRent", Call::CreateRent),
    (Method::GET, "/v1/pve/open/operate/", Call::Operate),
    (Method::GET, "/v1/pve/open/reboot/", Call::Reboot),
    (Method::GET, "/v1/pve/open/one/", Call::One),
    (Method::GET, "/v1/pve/open/mypage", Call::Mypage),
    (Method::DELETE, "/v1/pve/open/delete/", Call::Delete),
    // Not in the gateway's compiled table: what a `[[routes]]` entry adds.
    (Method::GET, "/v1/pve/open/balance/", Call::Balance),
];

/// Resolves `method` and `path` (without query) to an endpoint; `None` when none matches.
pub(crate) fn route<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    ROUTES.iter().find_map(|(m, pattern, call)| {
        let param = if m != method {
            None
        } else if pattern.ends_with('/') {
            path.strip_prefix(pattern)
                .filter(|p| !p.is_empty() && !p.contains('/'))
        } else {
            (path == *pattern).then_some("")
        };
        param.map(|param| Route { call: *call, param })
    })
}

/// One API request, as far as a handler needs it.
pub(crate) struct ApiRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

/// Answers an API request: HTTP 404 for an unknown endpoint, code 401 without a live token (except
/// for `getToken`), else the endpoint's own answer.
pub(crate) fn answer(shared: &Shared, route: Option<&Route<'_>>, req: &ApiRequest<'_>) -> Reply {
    let Some(route) = route else {
        return Reply::not_found(req.method, req.path);
    };
    let mut state = shared.lock();
    let result = handle(&mut state, &shared.cfg, Instant::now(), route, req);
    if let Err(ApiError {
        code: TOO_FREQUENT, ..
    }) = result
    {
        state.stats.too_frequent += 1;
    }
    Reply::from_result(result)
}

/// Checks the token, settles the world and calls the endpoint's handler.
fn handle(
    state: &mut State,
    cfg: &SimConfig,
    now: Instant,
    route: &Route<'_>,
    req: &ApiRequest<'_>,
) -> Result<Value, ApiError> {
    if route.call != Call::GetToken {
        state.tokens.check(req.headers.get(TOKEN_HEADER), now)?;
        state.world.settle(now);
    }
    let world = &mut state.world;
    let id = route.param;
    match route.call {
        Call::GetToken => auth::get_token(&mut state.tokens, cfg, now, req.body),
        Call::Create => disks::create(world, cfg, now, &params::object(req.body)?),
        Call::Info => disks::info(world, &cfg.uuid, id),
        Call::GetList => disks::list(world, &cfg.uuid, &params::object(req.body)?),
        Call::PveCreate => disks::mount(world, cfg, now, &params::object(req.body)?),
        Call::UpdateStatus => disks::update_status(world, cfg, now, &params::object(req.body)?),
        Call::MemoryTotal => disks::memory_total(world, id),
        Call::Image => Ok(hosts::images()),
        Call::PackAge => hosts::packages(id),
        Call::CreateQuantity => hosts::create_quantity(world, &params::object(req.body)?),
        Call::CreateRent => hosts::create_rent(world, &params::object(req.body)?),
        Call::Operate => hosts::operate(world, cfg, now, id, req.query),
        Call::Reboot => hosts::reboot(world, cfg, now, id),
        Call::One => hosts::one(world, id),
        Call::Mypage => hosts::page(world, req.query),
        Call::Delete => hosts::delete(world, id),
        Call::Balance => Ok(serde_json::json!({"id": id, "balance": "100.00"})),
    }
}
