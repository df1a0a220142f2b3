pub mod core;
pub mod widen;
