//! The `switchyard` binary: parses arguments, sets up logging and the runtime,
//! and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use switchyard::config::Config;

mod allocator;

/// mimalloc: the request path allocates small, short-lived buffers on every
/// request, which its thread-local free lists serve in a few dozen instructions.
#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;
use switchyard::logging::LogFormat;
use switchyard::server::{Gateway, Reloader};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A server-side-discovery gateway: one address, backends discovered in etcd or a file"
)]
struct Cli {
    /// Process log format on stderr: `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The config file `run` and `check` read when neither `--config` nor
/// `SWITCHYARD_CONFIG` names one: the quick-start config, relative to the
/// working directory (the repository root, or `/srv/switchyard` in the image).
const DEFAULT_CONFIG: &str = "config/quickstart.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP (or POST /reload on the admin listener) reloads the config file;
    /// SIGTERM/SIGINT stop accepting and drain in-flight requests.
    Run {
        /// The config file (TOML), read at start and at every reload.
        #[arg(long, value_name = "FILE", env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration and what it names (certificates, CA files, access logs);
    /// prints every error with its field path.
    Check {
        /// The config file (TOML) to validate.
        #[arg(long, value_name = "FILE", env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The gateway on its embedded default config, with built-in echo backends.
    Demo,
    /// Register an instance in etcd and keep it alive until SIGINT/SIGTERM (a provider sidecar).
    Register(Box<switchyard::register::RegisterArgs>),
}

fn main() -> ExitCode {
    allocator::settings();
    let cli = Cli::parse();
    switchyard::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => load(&config).and_then(|c| run(c, Some(config), Vec::new())),
        Command::Demo => demo(),
        Command::Register(args) => register(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|errors| anyhow::anyhow!("{}: invalid configuration\n{errors}", path.display()))
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    // What `run` would make before binding: certificates, CA files.
    switchyard::server::check(&config)
        .map_err(|errors| anyhow::anyhow!("{}: invalid configuration\n{errors}", path.display()))?;
    println!("{}: ok", path.display());
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    let (config, backends) = switchyard::demo::prepare()?;
    let listen = config.listeners[0].listen;
    println!("switchyard demo: gateway on http://{listen}, admin on http://{}", config.admin_listen);
    for (name, addr) in &backends {
        println!("  echo backend {name} on {addr}");
    }
    println!("try:  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done");
    run(config, None, backends)
}

fn register(args: switchyard::register::RegisterArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(switchyard::register::run_cli(args))?;
    Ok(())
}

/// Builds the runtime sized by `runtime.workers`, binds everything, serves until
/// SIGINT/SIGTERM; SIGHUP reloads `path` (the demo has none).
fn run(
    config: Config,
    path: Option<PathBuf>,
    demo_backends: Vec<(String, std::net::SocketAddr)>,
) -> anyhow::Result<()> {
    // One worker: a current-thread runtime skips the work-stealing machinery
    // (measured with bench/http.sh; see README "Performance").
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = builder.enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        // Handlers first: from here on SIGHUP no longer kills the process.
        let signals = Signals::install()?;
        let shutdown = CancellationToken::new();
        for (name, listener) in switchyard::demo::bind_backends(&demo_backends).await? {
            tokio::spawn(switchyard::demo::echo_backend(name, listener, shutdown.clone()));
        }
        let mut gateway = Gateway::bind(config).await?.accept_when_ready(switchyard::server::READY_WAIT);
        if let Some(path) = path {
            gateway = gateway.with_config_file(path);
        }
        tokio::spawn(signals.run(shutdown.clone(), gateway.reloader()));
        gateway.serve(shutdown).await;
        tracing::info!("stopped");
        Ok(())
    })
}

struct Signals {
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    /// SIGHUP reloads (the gateway logs the outcome); SIGTERM or SIGINT stops.
    async fn run(mut self, shutdown: CancellationToken, reloader: Reloader) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    let reloader = reloader.clone();
                    // Off this loop, so that a SIGTERM during a reload is not held up.
                    tokio::spawn(async move { drop(reloader.reload().await) });
                }
            }
        }
        shutdown.cancel();
    }
}
