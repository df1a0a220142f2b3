pub mod config;
pub mod fixtures;
pub mod nodes;
pub mod run;
pub mod serve;
pub mod validate;
pub mod worker;
pub mod workers;
