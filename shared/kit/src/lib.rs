//! The service kit: what turns a contract and a folder into a Custodian
//! service that keeps the privacy promises by construction.
//!
//! - [`declare`]: the privacy declarations written on the contracts, read
//!   once; whatever is undeclared is refused.
//! - [`gate`]: the access stack. Before any handler: the caller's token, a
//!   purpose the method declares, the method's tenant scope, and the hygiene
//!   of every value in the request.
//! - [`fields`] and [`store`]: records checked, normalised, sealed, cut down
//!   per purpose, diffed, exported, corrected and erased from the
//!   declarations alone.
//! - [`subject`], [`retention`], [`audit_api`], [`datamap`]: the shared
//!   contracts, served once per process and routed to each service.
//! - [`peers`]: calls between services, which never widen what the caller
//!   may do.
//! - [`erasure`], [`reapply`], [`mail`]: erasure outlives backups (a log
//!   apart from the databases, applied again before a service answers) and
//!   reaches the mail a service kept in its outbox.
//! - [`observe`]: the gauges of each service's stored state and the
//!   scheduled verification of its audit chain.
//! - [`module`]: a service as the runtime sees it; the kit starts the
//!   privacy kernel's writers itself, so no service can forget them.

pub mod audit_api;
pub mod call;
pub mod datamap;
pub mod declare;
pub mod erasure;
pub mod fields;
pub mod gate;
pub mod mail;
pub mod module;
pub mod observe;
pub mod pattern;
pub mod peers;
pub mod reapply;
pub mod retention;
pub mod store;
pub mod subject;

pub use call::{Call, respond};
pub use declare::DECLARATIONS;
pub use fields::Sensitive;
pub use module::{Context, KitService};
pub use store::{
    Arg, Beside, Binding, Filter, Idempotency, New, Query, Records, Shown, Store, Stored, beside,
};
