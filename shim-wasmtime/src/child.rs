//! Running a short-lived helper process to its end: `containerd-shim-runc-v2
//! start` and `delete`, and the shim's own compiler (`wasm::compiler`).

use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::monitor::{Subject, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a finished command printed, and how it ended.
pub struct Output {
    /// The exit code, or 128 + the signal that ended it.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs a command to its end, writing `input` to its stdin when the command
/// has a piped one. The shim library reaps every child on SIGCHLD (in the
/// server and in `shim delete` alike), so the exit status comes from its
/// exit monitor, not from `waitpid` on the child.
pub async fn output(cmd: &mut tokio::process::Command, input: &[u8]) -> std::io::Result<Output> {
    let mut exits = monitor_subscribe(Topic::Pid)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let result = async {
        let mut child = cmd.spawn()?;
        let pid = child.id().map(|p| p as i32);
        let write = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A child that exits without reading all of it closes the
                // pipe: what it says on stderr is the error to report.
                match stdin.write_all(input).await {
                    Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => return Err(err),
                    _ => {}
                }
            }
            Ok(())
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let (Some(out), Some(err)) = (child.stdout.as_mut(), child.stderr.as_mut()) {
            tokio::try_join!(
                write,
                out.read_to_end(&mut stdout),
                err.read_to_end(&mut stderr)
            )?;
        } else {
            write.await?;
        }
        loop {
            let Some(exit) = exits.rx.recv().await else {
                return Err(std::io::Error::other("the exit monitor closed"));
            };
            if matches!(exit.subject, Subject::Pid(p) if Some(p) == pid) {
                return Ok(Output {
                    status: exit.exit_code,
                    stdout,
                    stderr,
                });
            }
        }
    }
    .await;
    let _ = monitor_unsubscribe(exits.id).await;
    result
}
