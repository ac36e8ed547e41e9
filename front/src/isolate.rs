//! Compiler stages run on a stack of the library's own, with panics caught. The front end
//! recurses over the syntax tree, so a formula nested thousands of levels deep (a long
//! generated sum is a left-deep tree) needs more stack than a caller's thread may have: a
//! Python interpreter's, a rayon worker's. And a broken invariant (a panic) must come back as
//! an internal error naming the stage, not unwind into the caller.

use std::cell::Cell;

/// Reserved, not committed: it costs nothing until used.
pub const STACK_BYTES: usize = 1 << 30;

thread_local! {
    static ON_COMPILER_STACK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` on a thread with a [`STACK_BYTES`] stack (or right here when already on one),
/// and returns its result, or the panic's message.
pub fn on_compiler_stack<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, String> {
    if ON_COMPILER_STACK.with(Cell::get) {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(message);
    }
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("keopsc-compiler".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || {
                ON_COMPILER_STACK.with(|on| on.set(true));
                work()
            });
        match spawned {
            Ok(handle) => handle.join().map_err(message),
            Err(e) => Err(format!("cannot start the compiler's thread: {e}")),
        }
    })
}

fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_come_back_as_messages_and_deep_recursion_fits() {
        assert_eq!(on_compiler_stack(|| 7), Ok(7));
        let caught = on_compiler_stack(|| -> u32 { panic!("broken invariant") });
        assert_eq!(caught, Err("broken invariant".to_string()));
        // Nested calls run in place, on the same large stack.
        assert_eq!(on_compiler_stack(|| on_compiler_stack(|| 1)), Ok(Ok(1)));
        fn depth(n: u64) -> u64 {
            // a frame of about 200 bytes that the optimiser cannot fold away
            let pad = std::hint::black_box([n; 16]);
            if n == 0 {
                0
            } else {
                1 + depth(pad[15] - 1)
            }
        }
        // About 200 bytes a frame: far beyond a default 2 MiB or 8 MiB stack.
        assert_eq!(on_compiler_stack(|| depth(1_000_000)), Ok(1_000_000));
    }
}
