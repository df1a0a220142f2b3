pub mod widen;
