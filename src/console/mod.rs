//! The operator console (CONTRACT.md, "Admin", `GET /console`): a page on the admin listener that
//! reads the admin JSON endpoints with the admin key the operator enters.

pub(crate) mod assets;
