pub mod widen;
pub mod arch;
pub mod fixtures;
pub mod lora;
pub mod models;
pub mod pack;
