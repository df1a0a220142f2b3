pub mod nodes;
pub mod run;
pub mod validate;
