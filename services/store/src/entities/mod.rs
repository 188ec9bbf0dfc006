//! sea-orm entities, one module per table. Billing's tables will be added here.

pub mod accounts;
pub mod api_keys;
