pub mod widen;
pub mod arch;
pub mod lora;
pub mod models;
pub mod pack;
