//! all-MiniLM-L6-v2 in burn: [`config`] (shape), [`network`] (weights + forward),
//! [`load`] (checkpoint → network).

mod config;
mod load;
mod network;

pub use config::MiniLmConfig;
pub use load::load;
pub use network::MiniLm;
