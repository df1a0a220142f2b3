//! ComfyUI's `ExecutionBlocker`: a value a node outputs instead of a real one, so that every
//! node using it is not run (docs/comfyui.md, "Execution blockers"). With a message, the first
//! node it stops reports it to the client as a non-fatal `execution_error` and passes a silent
//! blocker on; without one, it travels silently. An output node that is blocked shows nothing.

use std::any::Any;
use std::sync::Arc;

use crate::value::{Opaque, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionBlocker {
    pub message: Option<String>,
}

impl ExecutionBlocker {
    pub fn value(message: Option<String>) -> Value {
        Value::Handle(Arc::new(ExecutionBlocker { message }))
    }
}

impl Opaque for ExecutionBlocker {
    fn type_name(&self) -> &str {
        "ExecutionBlocker"
    }

    fn byte_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.message.as_ref().map_or(0, String::len)
    }

    fn describe(&self) -> String {
        match &self.message {
            Some(m) => format!("<ExecutionBlocker: {m}>"),
            None => "<ExecutionBlocker>".into(),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
