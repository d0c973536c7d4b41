//! The vigil command line: run | check-config | import | report | version.
//! `anyhow` lives here and nowhere else in the product.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil::config::{self, Config};
use vigil::error::ErrorKind;

const DEFAULT_CONFIG: &str = "config/vigil.toml";

/// jemalloc: less CPU per committed MQTT event than mimalloc (whose fresh pages, faulted in as
/// transparent huge pages under cross-thread frees, were 8% of the MQTT path) and less RSS
/// with 100,000 devices than mimalloc or glibc's per-thread arenas (BENCHMARKS.md,
/// "2026-12-07, jemalloc").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Edge gateway for public-security video networks and smart safe communities"
)]
struct Cli {
    /// Log JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file; default config/vigil.toml if it exists, else the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file (and the environment overrides) without starting.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Import devices from a CSV file (id,name,kind,protocol,org_id,rtsp_url,profile): all rows or none.
    Import {
        /// The CSV file.
        file: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Reports.
    Report {
        #[command(subcommand)]
        report: Report,
    },
    /// Issue certificates for the QUIC link between tiers: the tier's CA (made once in DIR,
    /// reused after) and a certificate per gateway id (`<id>.pem`, `<id>.key`).
    Certs {
        /// Where the files go.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names or addresses the hub is reached by (subject alternative names), e.g.
        /// `--san hub.district.local --san 10.1.2.3`. Default: localhost and 127.0.0.1.
        #[arg(long)]
        san: Vec<String>,
        /// The gateway ids (20 digits, `[gateway] id`) to issue certificates for.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Write Mosquitto's password and ACL files for the registry's MQTT devices (for a site
    /// with its own broker: `mqtt.mode = "external"`): each device logs in with its id and
    /// password and writes only its own topics; only vigil's user reads.
    MqttAcl {
        /// Where `vigil.passwd` and `vigil.acl` go.
        #[arg(long, default_value = "mosquitto")]
        out: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum Report {
    /// The daily online report: sampled rate, time-weighted availability, offline list.
    Online {
        /// The local date, YYYY-MM-DD (default: today in the assessment's zone).
        #[arg(long)]
        date: Option<String>,
        /// Limit to one org's subtree.
        #[arg(long)]
        org: Option<String>,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| Path::new(DEFAULT_CONFIG).exists().then(|| PathBuf::from(DEFAULT_CONFIG)))
}

fn load_config(given: Option<PathBuf>) -> Result<Config, config::Error> {
    Config::load(config_path(given).as_deref())
}

fn exit_code(kind: ErrorKind) -> ExitCode {
    match kind {
        ErrorKind::InvalidInput => ExitCode::from(2),
        ErrorKind::Unavailable | ErrorKind::Timeout => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vigil::telemetry::init_logging(cli.log_json);
    match cli.command {
        Command::Version => {
            println!("vigil {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(cfg) => {
                // Device profiles are part of the configuration: each is compiled and its
                // test vectors run; one that fails is named and the check fails.
                let report = vigil::profiles::ProfileSet::load_dir(&cfg.mqtt.profiles_dir);
                for p in report.set.profiles() {
                    println!("profile {} ({} test vectors): OK", p.id, p.tests.len());
                }
                if !report.problems.is_empty() {
                    for (f, m) in &report.problems {
                        eprintln!("{f}: {m}");
                    }
                    eprintln!("{}: {} device profile(s) refused", file.display(), report.problems.len());
                    return ExitCode::from(2);
                }
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        other => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async_main(other))
        }
    }
}

async fn async_main(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => {
            let config = match load_config(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let shutdown = CancellationToken::new();
            let signals = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("Signal received: shutting down (a second signal exits at once).");
                signals.cancel();
                wait_for_signal().await;
                tracing::warn!("Second signal: exiting now.");
                std::process::exit(130);
            });
            match vigil::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "vigil could not start.");
                    exit_code(e.kind())
                }
            }
        }
        Command::Import { file, config } => match import(&file, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("import failed: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Report { report: Report::Online { date, org, csv, config } } => {
            match report(date, org, csv, config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("report failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Certs { out, san, ids } => {
            let sans = if san.is_empty() { vec!["localhost".into(), "127.0.0.1".into()] } else { san };
            match vigil::link::tls::issue(&out, &ids, &sans) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("certs failed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::MqttAcl { out, config } => match mqtt_acl(&out, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mqtt-acl failed: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Version | Command::CheckConfig { .. } => ExitCode::SUCCESS,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn open_registry(config: &Config) -> anyhow::Result<vigil::registry::Registry> {
    let db = vigil::db::Db::connect(&config.database_url(), config.database.max_connections).await?;
    Ok(vigil::registry::Registry::load(db, config.admission.clone()).await?)
}

async fn import(file: &Path, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let registry = open_registry(&config).await?;
    let orgs: Vec<vigil::registry::Org> = config.orgs.iter().map(vigil::registry::Org::from_seed).collect();
    registry.seed_orgs(&orgs).await?;
    let devices = vigil::registry::import::parse(&registry, &body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = indicatif::ProgressBar::new(devices.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} devices ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let total = devices.len();
    let (_, updated) = registry.upsert_devices(devices, |n| bar.set_position(n as u64)).await?;
    bar.finish();
    println!(
        "{} devices imported: {} created, {} updated (a running gateway picks them up at its next start)",
        total,
        total - updated,
        updated
    );
    registry.db().close().await;
    Ok(())
}

async fn mqtt_acl(out: &Path, config: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let config = load_config(config)?;
    let registry = open_registry(&config).await?;
    let report = vigil::profiles::ProfileSet::load_dir(&config.mqtt.profiles_dir);
    for (file, problem) in &report.problems {
        eprintln!("profile {file} left out: {problem}");
    }
    let devices: Vec<_> = registry.read().devices().cloned().collect();
    let m = &config.mqtt;
    let vigil_login = (!m.username.is_empty()).then_some((m.username.as_str(), m.password.as_str()));
    let files = vigil::sources::mqtt::acl::mosquitto(&devices, &report.set, &m.device_password, vigil_login);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<PathBuf> {
        let path = out.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(path)
    };
    let pw = write("vigil.passwd", &files.passwords, 0o600)?;
    let acl = write("vigil.acl", &files.acl, 0o644)?;
    println!("wrote {} ({} devices) and {}", pw.display(), files.devices, acl.display());
    if vigil_login.is_none() {
        println!("mqtt.username is empty: no login for vigil itself was written (give vigil one and run again)");
    }
    for u in files.unrestricted {
        println!("not restricted per device (its device id is not a topic level): {u}");
    }
    println!("in mosquitto.conf: password_file {}, acl_file {}, allow_anonymous false", pw.display(), acl.display());
    registry.db().close().await;
    Ok(())
}

async fn report(date: Option<String>, org: Option<String>, csv: bool, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let tz = config.timezone();
    let now = vigil::clock::now_ms();
    let date = date.unwrap_or_else(|| vigil::clock::to_datetime(now, &tz).format("%Y-%m-%d").to_string());
    let registry = open_registry(&config).await?;
    let a = &config.assessment;
    let r =
        vigil::rate::report::daily(&registry, &date, org.as_deref(), &tz, a.online_target, a.count_maintenance, now)
            .await?;
    if csv {
        print!("{}", r.to_csv());
    } else {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    registry.db().close().await;
    Ok(())
}
