//! Mock providers speaking the providers' real wire formats.

pub mod openai;
