//! What a context is created from: mpt_init_options as a builder.

use std::path::{Path, PathBuf};

use crate::log::{LogFn, LogLevel};

pub(crate) enum RecipeSource {
    File(PathBuf),
    Toml(String),
}

/// A recipe (a TOML file or text), overrides applied after it in order, the log callback and
/// level, and this process's place in a job (by default read from the launcher's
/// environment: torchrun, SLURM or Open MPI; else rank 0 of 1).
pub struct Options {
    pub(crate) recipe: RecipeSource,
    pub(crate) overrides: Vec<String>,
    pub(crate) log: Option<Box<LogFn>>,
    pub(crate) log_level: LogLevel,
    pub(crate) rank: Option<u32>,
    pub(crate) world_size: Option<u32>,
    pub(crate) local_rank: Option<u32>,
    pub(crate) master_addr: Option<String>,
    pub(crate) master_port: Option<u16>,
}

impl Options {
    fn with(recipe: RecipeSource) -> Options {
        Options {
            recipe,
            overrides: Vec::new(),
            log: None,
            log_level: LogLevel::Info,
            rank: None,
            world_size: None,
            local_rank: None,
            master_addr: None,
            master_port: None,
        }
    }

    /// A recipe file; errors name it and the line.
    pub fn from_file(path: impl AsRef<Path>) -> Options {
        Options::with(RecipeSource::File(path.as_ref().to_path_buf()))
    }

    /// A recipe given as TOML text; errors name it "<string>".
    pub fn from_toml(text: impl Into<String>) -> Options {
        Options::with(RecipeSource::Toml(text.into()))
    }

    /// Adds an override "section.key=value", applied after the recipe and earlier overrides.
    pub fn set(mut self, assignment: impl Into<String>) -> Options {
        self.overrides.push(assignment.into());
        self
    }

    /// The most verbose level delivered (default Info; Off delivers nothing).
    pub fn log_level(mut self, level: LogLevel) -> Options {
        self.log_level = level;
        self
    }

    /// Log lines go to `callback` (level, one line without its newline) instead of stderr.
    /// It runs inside the library call that logs, on that call's thread.
    pub fn on_log<F>(mut self, callback: F) -> Options
    where
        F: FnMut(LogLevel, &str) + Send + 'static,
    {
        self.log = Some(Box::new(callback));
        self
    }

    /// This process's place in a job, instead of the launcher's environment.
    pub fn place(mut self, rank: u32, world_size: u32, local_rank: u32) -> Options {
        self.rank = Some(rank);
        self.world_size = Some(world_size);
        self.local_rank = Some(local_rank);
        self
    }

    /// Where rank 0's rendezvous store listens, instead of MASTER_ADDR / MASTER_PORT.
    pub fn master(mut self, addr: impl Into<String>, port: u16) -> Options {
        self.master_addr = Some(addr.into());
        self.master_port = Some(port);
        self
    }
}
