//! Untrusted PDF bytes are parsed in a child process, never in the server: the `docuchat` binary
//! run again as `docuchat pdf-child`, with the PDF on its standard input and one JSON line per
//! result on its standard output.
//!
//! The child sets its hard limits itself, first thing, before it reads a byte of the PDF
//! (`setrlimit`): an address-space cap (`EXTRACT_MEMORY_MB`), a CPU-time cap a second past the
//! deadline, no core files, no file writes, a few descriptors; it makes itself the kernel's first
//! choice when memory runs out (`oom_score_adj` 1000) and dies with its parent
//! (`PR_SET_PDEATHSIG`). Setting them in the child rather than between fork and exec lets the
//! server start it with `posix_spawn`, without copying its own page tables: a child costs about
//! 3 ms. Its environment is empty: no secret reaches it. The parent kills it at the wall-clock deadline, when what it
//! writes passes `EXTRACT_MAX_TEXT_MB`, and when the service stops. However the child ends — an
//! answer, an error of its own, a crash, a limit — the parent turns it into a named error and goes
//! on; the in-process limits of the parser (time budget, content and glyph caps) stay the first
//! line, so ordinary files never meet the hard ones.

use std::{
    borrow::Cow,
    io::{self, BufWriter, Read, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Command,
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

use super::pdf::{self, ExtractError, Limits, PageText, PdfInfo};

/// The hidden subcommand the child runs.
pub const CHILD_COMMAND: &str = "pdf-child";

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The program run as the child: the `docuchat` binary (the running one by default).
    pub program: PathBuf,
    /// Address-space limit of a child.
    pub memory_bytes: u64,
    /// Most text one document's child may write (its pages, as JSON).
    pub max_text_bytes: usize,
    /// Wall-clock deadline of an upload's inspection (open, count pages).
    pub inspect_timeout: Duration,
    /// Inspections at once; an upload waits for a free one at most `inspect_timeout`.
    pub inspections: usize,
}

/// Why a child gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// the file: a named error, final for these bytes
    #[error(transparent)]
    Pdf(#[from] ExtractError),
    /// the service is stopping; the work is to be done again later
    #[error("interrupted: the service is stopping")]
    Interrupted,
    /// every inspection slot stayed taken for the whole deadline
    #[error("too many PDFs are being inspected")]
    Busy,
    /// the child could not be started (an operator's problem, not the file's)
    #[error("the PDF reader could not be started: {0}")]
    Unavailable(String),
}

/// One line of the child's output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// a page's text, as soon as it is read
    Page(PageText),
    /// the inspection's answer
    Pages(usize),
    Error(WireError),
    /// extraction ended well
    Done,
}

/// An [`ExtractError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
    #[serde(default)]
    pages: Option<(usize, usize)>,
}

impl From<&ExtractError> for WireError {
    fn from(e: &ExtractError) -> Self {
        let (message, pages) = match e {
            ExtractError::TooComplex(why) => (why.to_string(), None),
            ExtractError::TooManyPages(n, max) => (e.to_string(), Some((*n, *max))),
            other => (other.to_string(), None),
        };
        WireError { code: e.code().to_owned(), message, pages }
    }
}

impl From<WireError> for ExtractError {
    fn from(w: WireError) -> Self {
        match (w.code.as_str(), w.pages) {
            ("too_many_pages", Some((n, max))) => ExtractError::TooManyPages(n, max),
            ("invalid_pdf", _) => ExtractError::Invalid,
            ("encrypted_pdf", _) => ExtractError::Encrypted,
            ("no_extractable_text", _) => ExtractError::NoText,
            ("extraction_timeout", _) => ExtractError::Timeout,
            ("pdf_too_complex", _) => ExtractError::TooComplex(Cow::Owned(w.message)),
            _ => ExtractError::too_complex("its reader gave an answer that makes no sense"),
        }
    }
}

pub struct Sandbox {
    config: SandboxConfig,
    inspections: Semaphore,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let inspections = Semaphore::new(config.inspections.max(1));
        Self { config, inspections }
    }

    /// Opens the PDF and counts its pages, in a child.
    pub async fn inspect(&self, data: &[u8], max_pages: usize) -> Result<PdfInfo, SandboxError> {
        // one deadline for the wait for a slot and the inspection together: an upload is never
        // held longer than that (and the second the parent's clock allows past it)
        let started = std::time::Instant::now();
        let _slot = tokio::time::timeout(self.config.inspect_timeout, self.inspections.acquire())
            .await
            .map_err(|_| SandboxError::Busy)?
            .map_err(|_| SandboxError::Busy)?;
        let deadline = self.config.inspect_timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        let mut pages = None;
        let args = ["inspect".to_owned(), max_pages.to_string(), deadline.as_millis().to_string()];
        self.run(&args, data, deadline, None, |line| match line {
            Line::Pages(n) => {
                pages = Some(n);
                true
            }
            _ => false,
        })
        .await?;
        pages.map(|pages| PdfInfo { pages }).ok_or_else(|| nonsense().into())
    }

    /// Extracts every page's text in a child; `progress` is called with the pages done.
    /// Cancelling `stop` kills the child at once ([`SandboxError::Interrupted`]).
    pub async fn extract(
        &self,
        data: &[u8],
        limits: &Limits,
        stop: &CancellationToken,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<PageText>, SandboxError> {
        let args = ["extract".to_owned(), limits.max_pages.to_string(), limits.time_budget.as_millis().to_string()];
        let mut pages = Vec::new();
        let mut done = false;
        self.run(&args, data, limits.time_budget, Some(stop), |line| match line {
            Line::Page(page) => {
                pages.push(page);
                progress(pages.len());
                false
            }
            Line::Done => {
                done = true;
                true
            }
            _ => false,
        })
        .await?;
        if done { Ok(pages) } else { Err(nonsense().into()) }
    }

    /// Runs a child on `data`, handing each line of its output but errors to `line` (which says
    /// whether it was the last), and classifies how the child ended.
    async fn run(
        &self,
        args: &[String],
        data: &[u8],
        deadline: Duration,
        stop: Option<&CancellationToken>,
        mut line: impl FnMut(Line) -> bool,
    ) -> Result<(), SandboxError> {
        let mut command = Command::new(&self.config.program);
        command
            .arg(CHILD_COMMAND)
            .args(args)
            .arg(self.config.memory_bytes.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let max_text = self.config.max_text_bytes as u64;

        let mut ended_well = false;
        let mut failure: Option<ExtractError> = None;
        let work = async {
            let write = async {
                // a child that stops reading (it failed early) closes the pipe: not our error
                let _ = stdin.write_all(data).await;
                drop(stdin);
            };
            let read = async {
                let mut reader = BufReader::new(stdout.take(max_text + 1));
                let mut buf = Vec::new();
                let mut read_total = 0u64;
                loop {
                    buf.clear();
                    let n = reader.read_until(b'\n', &mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    read_total += n as u64;
                    if read_total > max_text {
                        failure = Some(ExtractError::too_complex("it holds more text than allowed"));
                        break;
                    }
                    match serde_json::from_slice::<Line>(&buf) {
                        Ok(Line::Error(e)) => {
                            failure = Some(e.into());
                            break;
                        }
                        Ok(other) => {
                            if line(other) {
                                ended_well = true;
                                break;
                            }
                        }
                        Err(_) => {
                            failure = Some(nonsense());
                            break;
                        }
                    }
                }
            };
            tokio::join!(write, read);
        };
        let stopped = async {
            match stop {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            finished = tokio::time::timeout(deadline + Duration::from_secs(1), work) => Some(finished.is_ok()),
            () = stopped => None,
        };
        // whatever it is doing now, it has nothing more to say
        let status = match outcome {
            Some(true) if ended_well || failure.is_some() => child.wait().await.ok(),
            _ => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        match outcome {
            None => Err(SandboxError::Interrupted),
            Some(false) => Err(ExtractError::Timeout.into()),
            Some(true) => match failure {
                Some(e) => Err(e.into()),
                None if ended_well => Ok(()),
                None => Err(ended_badly(status).into()),
            },
        }
    }
}

fn nonsense() -> ExtractError {
    ExtractError::too_complex("its reader gave an answer that makes no sense")
}

/// What a child that ended without an answer means.
fn ended_badly(status: Option<ExitStatus>) -> ExtractError {
    match status.and_then(|s| s.signal()) {
        // the CPU-time limit's signal
        Some(libc::SIGXCPU) => ExtractError::Timeout,
        Some(_) => ExtractError::too_complex("reading it needs more memory than allowed, or crashed its reader"),
        None => ExtractError::too_complex("its reader stopped without an answer"),
    }
}

/// The child's limits, set by the child on itself before it reads its input.
fn limit_this_process(memory: u64, cpu_seconds: u64) -> io::Result<()> {
    fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
        let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: setrlimit reads the struct it is given and nothing else
        if unsafe { libc::setrlimit(resource, &limit) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
    set(libc::RLIMIT_AS, memory, memory)?;
    set(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
    set(libc::RLIMIT_CORE, 0, 0)?;
    set(libc::RLIMIT_FSIZE, 0, 0)?;
    set(libc::RLIMIT_NOFILE, 32, 32)?;
    // SAFETY: prctl, open, write and close with constant, valid arguments
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
    }
    Ok(())
}

/// The child: limits itself, reads the PDF from standard input and writes its answer, one JSON
/// line at a time. `mode` is `inspect` or `extract`; the CPU limit is a second past `budget`.
/// Returns the process's exit code.
pub fn child_main(mode: &str, max_pages: usize, budget: Duration, memory_bytes: u64) -> i32 {
    if limit_this_process(memory_bytes, budget.as_secs() + 1).is_err() {
        return 4;
    }
    // (a parent that died before the death signal was armed closed the pipe: the read below ends)
    let mut data = Vec::new();
    if io::stdin().lock().read_to_end(&mut data).is_err() {
        return 2;
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let mut write = |line: &Line| -> io::Result<()> {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
        // each page as it is read: the parent shows progress
        out.flush()
    };
    let result = match mode {
        "inspect" => match pdf::inspect(&data, max_pages) {
            Ok(info) => write(&Line::Pages(info.pages)),
            Err(e) => write(&Line::Error((&e).into())),
        },
        "extract" => {
            let limits = Limits { max_pages, time_budget: budget, ..Limits::default() };
            let mut failed_write = None;
            let result = pdf::extract_each(&data, &limits, |page| {
                if failed_write.is_none()
                    && let Err(e) = write(&Line::Page(page))
                {
                    failed_write = Some(e);
                }
            });
            match (failed_write, result) {
                (Some(e), _) => Err(e),
                (None, Ok(())) => write(&Line::Done),
                (None, Err(e)) => write(&Line::Error((&e).into())),
            }
        }
        _ => return 2,
    };
    if result.is_ok() { 0 } else { 3 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_unchanged() {
        for e in [
            ExtractError::Invalid,
            ExtractError::Encrypted,
            ExtractError::TooManyPages(900, 500),
            ExtractError::NoText,
            ExtractError::Timeout,
            ExtractError::too_complex("a page has too many drawing operations"),
        ] {
            let line = serde_json::to_string(&Line::Error((&e).into())).unwrap();
            let Line::Error(back) = serde_json::from_str(&line).unwrap() else { panic!("{line}") };
            assert_eq!(ExtractError::from(back), e, "{line}");
        }
    }
}
