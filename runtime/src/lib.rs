pub mod schema;
pub mod value;
pub use value::{Opaque, Value};
