//! A compile nobody waits for, on a thread of its own at a low CPU priority.
//!
//! Cranelift's background compile takes a whole core for tens to hundreds of milliseconds;
//! on a small edge host (two cores here) that core is half the machine, and pods starting or
//! serving meanwhile would queue behind it. At nice 10, the kernel's scheduler gives it
//! about a tenth of a core against one busy thread of normal priority (weights 110 and
//! 1024), so it still finishes under load, and all of an idle core. The nice value is per
//! thread on Linux, so the rest of the node keeps its own.

/// The background compile's nice value.
const NICE: i32 = 10;

/// Runs `work` on a new thread at [`NICE`]; the thread ends with it. Compiles run one at a
/// time (the caller holds the optimiser's permit), so there is at most one such thread.
pub(super) async fn at_low_priority<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (sender, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wasm-tier-up".into())
        .spawn(move || {
            lower_this_threads_priority();
            // The receiver is gone only if the node is stopping.
            let _ = sender.send(work());
        })
        .map_err(|err| format!("cannot start the compile thread: {err}"))?;
    answer
        .await
        .map_err(|_| "the compile thread ended without an answer".to_string())
}

/// `setpriority(PRIO_PROCESS, 0, NICE)`, which on Linux applies to the calling thread only;
/// a node already run at a lower priority than that keeps it.
fn lower_this_threads_priority() {
    let lowered = rustix::process::getpriority_process(None).and_then(|nice| {
        if nice < NICE {
            rustix::process::setpriority_process(None, NICE)
        } else {
            Ok(())
        }
    });
    if let Err(err) = lowered {
        // Only the compile's share of the CPU is at stake; it runs all the same.
        tracing::debug!(%err, "cannot lower the compile thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_at_nice_ten_and_leaves_the_callers_priority_alone() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let inside = at_low_priority(|| rustix::process::getpriority_process(None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inside, NICE.max(before));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }

    #[tokio::test]
    async fn a_panicking_compile_is_an_error_not_a_hang() {
        let answer = at_low_priority(|| -> u32 { panic!("compiler bug") }).await;
        assert!(answer.unwrap_err().contains("without an answer"));
    }
}
