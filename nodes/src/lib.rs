pub mod widen;
pub mod arch;
pub mod lora;
pub mod models;
pub mod cuda;
pub mod merge;
pub mod pack;
pub mod recipe;
