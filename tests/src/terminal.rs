//! A command run on a pseudo-terminal, as an operator at a terminal runs it: its stdin,
//! stdout and stderr are the terminal, what it draws is kept as a transcript, and the test
//! types answers into it.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running command and the terminal it runs on.
pub struct Terminal {
    child: Child,
    master: File,
    transcript: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

fn check(result: libc::c_int, what: &str) -> Result<()> {
    if result < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

impl Terminal {
    /// Runs `command` on a new 40×120 pseudo-terminal (`TERM=xterm`).
    pub fn spawn(mut command: Command) -> Result<Terminal> {
        // SAFETY: plain libc calls on a descriptor this function owns; every result is checked.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        check(master, "posix_openpt")?;
        // SAFETY: `master` was just opened and nothing else owns it.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let fd = master.as_raw_fd();
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `fd` is an open pty master; `name` is a writable buffer of the length given.
        unsafe {
            check(libc::grantpt(fd), "grantpt")?;
            check(libc::unlockpt(fd), "unlockpt")?;
            check(
                libc::ptsname_r(fd, name.as_mut_ptr(), name.len()),
                "ptsname_r",
            )?;
        }
        // SAFETY: ptsname_r wrote a NUL-terminated name into `name`.
        let path = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_str()
            .context("the terminal's name")?
            .to_string();
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer given.
        check(
            unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) },
            "TIOCSWINSZ",
        )?;
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        command
            .env("TERM", "xterm")
            .stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        // The terminal is the command's controlling terminal, in a session of its own, as a
        // shell would make it: Ctrl-C typed (`\x03`) then reaches it as SIGINT.
        // SAFETY: between fork and exec only async-signal-safe calls (setsid, ioctl) are made.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .context("starting the command on a terminal")?;
        // The command's copies of the terminal end go with it: once the child exits, reading
        // the master ends.
        drop(command);
        let master = File::from(master);
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let mut master = master.try_clone()?;
            let transcript = Arc::clone(&transcript);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                // Ends with EIO once no process holds the terminal open.
                while let Ok(read @ 1..) = master.read(&mut buffer) {
                    if let Ok(mut transcript) = transcript.lock() {
                        transcript.extend_from_slice(&buffer[..read]);
                    }
                }
            })
        };
        Ok(Terminal {
            child,
            master,
            transcript,
            reader: Some(reader),
        })
    }

    /// Everything the command has written so far.
    pub fn transcript(&self) -> String {
        let bytes = self
            .transcript
            .lock()
            .map(|transcript| transcript.clone())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the transcript contains `text`.
    pub fn wait_for_text(&self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.transcript().contains(text) {
            if Instant::now() > deadline {
                bail!(
                    "no {text:?} on the terminal in {timeout:?}: {:?}",
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Types `text` (a line needs its `\n`).
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        self.master.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Waits for the command to exit; its status and the whole transcript.
    pub fn wait(mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("still running after {timeout:?}: {:?}", self.transcript());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok((status, self.transcript()))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
