//! The `finovy-gateway` command line: parses arguments and dispatches to the library. Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use finovy_gateway::config::{self, FileConfig, LogFormat, Overrides, Settings};
use finovy_gateway::purchases;
use finovy_gateway::reload::Source;
use finovy_gateway::server::{Server, StartError, shutdown_signal};
use finovy_gateway::sim::{SimConfig, Simulator};
use finovy_gateway::telemetry;

/// mimalloc: glibc's allocator spent a fifth of a cache hit's instructions on malloc and free.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rand::Rng;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(
    name = "finovy-gateway",
    version,
    about = "A secure, token-brokering gateway in front of the xuandashi cloud API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn duration(s: &str) -> Result<Duration, String> {
    finovy_gateway::duration::parse(s)
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (default: config/gateway.toml when present, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data-plane address, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin address (/metrics, /healthz, /readyz), e.g. 0.0.0.0:9090.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Upstream base URL, e.g. https://client.xuandashi.com.
        #[arg(long)]
        upstream: Option<String>,
        /// Redis URL for shared mode (also FGW_REDIS_URL).
        #[arg(long)]
        redis: Option<String>,
        /// Log format: human or json.
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
    },
    /// Run the upstream simulator and the gateway in front of it on loopback, with demo credentials.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:18080")]
        sim_listen: SocketAddr,
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
    },
    /// Run only the upstream simulator.
    Sim {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: SocketAddr,
        #[arg(long, default_value = "demo-uuid")]
        uuid: String,
        #[arg(long, default_value = "demo-secret")]
        secret: String,
        /// Lifetime of the tokens it issues.
        #[arg(long, default_value = "30m", value_parser = duration)]
        token_ttl: Duration,
        /// Added to every answer.
        #[arg(long, default_value = "0ms", value_parser = duration)]
        latency: Duration,
        /// Creates closer than this to the previous one are answered 220025 (0 = off).
        #[arg(long, default_value = "1s", value_parser = duration)]
        create_min_interval: Duration,
        /// How long a mount stays in status 1 before status 2.
        #[arg(long, default_value = "2s", value_parser = duration)]
        mount_delay: Duration,
    },
    /// Validate a config file and print the effective settings, secrets masked.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a fresh random client key and the [[clients]] entry holding its digest.
    Keygen {
        #[arg(long)]
        name: String,
    },
    /// Print the purchase ledger's entries, newest first, read directly from its file or URL.
    Purchases {
        /// Config file naming the ledger (default: config/gateway.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Arrived at or after: RFC 3339, a date (midnight in --tz) or epoch milliseconds.
        #[arg(long)]
        since: Option<String>,
        /// Arrived before; as --since.
        #[arg(long)]
        until: Option<String>,
        /// The IANA time zone of a plain date (default UTC).
        #[arg(long)]
        tz: Option<String>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        account: Option<String>,
        /// A route, e.g. disk.create.
        #[arg(long)]
        route: Option<String>,
        /// bought, replayed, joined, refused, failed, unknown, reconciled or open.
        #[arg(long)]
        outcome: Option<String>,
        /// An Idempotency-Key.
        #[arg(long)]
        key: Option<String>,
        /// At most this many entries (default: all).
        #[arg(long)]
        limit: Option<u64>,
        /// table, json (one array) or csv.
        #[arg(long, value_enum, default_value = "table")]
        format: PurchasesFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PurchasesFormat {
    Table,
    Json,
    Csv,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected human or json".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Keygen { name } => keygen(&name),
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run(other))
        }
    }
}

async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            upstream,
            redis,
            log_format,
        } => {
            let overrides = Overrides {
                listen,
                admin_listen,
                upstream,
                redis,
                log_format,
            };
            serve(config, overrides).await
        }
        Command::Dev {
            listen,
            admin_listen,
            sim_listen,
            log_format,
        } => {
            dev(
                listen,
                admin_listen,
                sim_listen,
                log_format.unwrap_or_default(),
            )
            .await
        }
        Command::Sim {
            listen,
            uuid,
            secret,
            token_ttl,
            latency,
            create_min_interval,
            mount_delay,
        } => {
            let _log = telemetry::init(LogFormat::Human, "info");
            let cfg = SimConfig {
                uuid,
                secret,
                token_ttl,
                latency,
                create_min_interval,
                mount_delay,
            };
            sim(listen, cfg).await
        }
        Command::Purchases {
            config,
            since,
            until,
            tz,
            client,
            account,
            route,
            outcome,
            key,
            limit,
            format,
        } => {
            let format = match format {
                PurchasesFormat::Table => purchases::Format::Table,
                PurchasesFormat::Json => purchases::Format::Json,
                PurchasesFormat::Csv => purchases::Format::Csv,
            };
            let opts = purchases::Options {
                config,
                since,
                until,
                tz,
                client,
                account,
                route,
                outcome,
                key,
                limit,
                format,
            };
            return purchases::run(opts).await;
        }
        Command::CheckConfig { .. } | Command::Keygen { .. } => {
            unreachable!("handled without a runtime")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finovy-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: Option<PathBuf>, overrides: Overrides) -> Result<(), StartError> {
    let file = FileConfig::load(path.as_deref())?;
    let settings = Settings::resolve(file, &overrides, &config::process_env)?;
    let _log = telemetry::init_for(&settings);
    let server = Server::bind(settings)
        .await?
        .with_reload(Source { path, overrides });
    server
        .run(shutdown_signal())
        .await
        .map_err(StartError::Serve)
}

async fn sim(listen: SocketAddr, cfg: SimConfig) -> Result<(), StartError> {
    let sim = Simulator::bind(listen, cfg)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(listen = %sim.local_addr(), "simulator listening");
    sim.run(shutdown_signal()).await.map_err(StartError::Serve)
}

/// A fresh client key: 192 random bits, hex, with a prefix that makes it recognisable in a leak scan.
fn new_key() -> String {
    format!("fgw_{}", hex::encode(rand::rng().random::<[u8; 24]>()))
}

async fn dev(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    sim_listen: SocketAddr,
    log_format: LogFormat,
) -> Result<(), StartError> {
    let _log = telemetry::init(log_format, "info");
    let sim = Simulator::bind(sim_listen, SimConfig::default())
        .await
        .map_err(|source| StartError::Simulator {
            addr: sim_listen,
            source,
        })?;
    let sim_addr = sim.local_addr();
    let key = new_key();
    let admin_key = new_key();
    // The ledger in a folder of its own for this run; the admin key to read it with.
    let ledger = std::env::temp_dir()
        .join(format!("finovy-gateway-dev-{}", std::process::id()))
        .join("ledger.sqlite");
    let dev_toml = format!(
        "[admin]\nkey_sha256 = \"{}\"\n[ledger]\npath = {:?}\n",
        hex::encode(Sha256::digest(admin_key.as_bytes())),
        ledger.display().to_string()
    );
    let mut file = FileConfig::parse(&dev_toml, std::path::Path::new("dev"))?;
    file.server.listen = listen;
    file.server.admin_listen = admin_listen;
    file.upstream.base_url = format!("http://{sim_addr}");
    file.clients.push(config::ClientConfig {
        name: "demo".into(),
        key_sha256: hex::encode(Sha256::digest(key.as_bytes())),
        account: config::DEFAULT_ACCOUNT.into(),
        routes: None,
        token_lease: false,
        budget: None,
    });
    let defaults = SimConfig::default();
    let (uuid, secret) = (defaults.uuid.clone(), defaults.secret.clone());
    let env = move |name: &str| match name {
        config::ENV_UUID => Some(uuid.clone()),
        config::ENV_SECRET => Some(secret.clone()),
        _ => None,
    };
    let settings = Settings::resolve(file, &Overrides::default(), &env)?;
    let server = Server::bind(settings)
        .await
        .map_err(|e| StartError::Dev(Box::new(e)))?;
    let gw = server.local_addr();
    let admin = server.admin_addr();
    print_dev_banner(&Banner {
        gw,
        admin,
        sim: sim_addr,
        key: &key,
        admin_key: &admin_key,
        ledger: &ledger,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sim_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let sim_task = tokio::spawn(sim.run(sim_stop));
    let result = server
        .run(shutdown_signal())
        .await
        .map_err(StartError::Serve);
    let _ = stop_tx.send(true);
    let _ = sim_task.await;
    result
}

/// Writes `text` to standard output. A reader that went away (`| head`) is not an error of
/// ours: `print!` would panic on the broken pipe.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// What `dev` prints at start.
struct Banner<'a> {
    gw: SocketAddr,
    admin: SocketAddr,
    sim: SocketAddr,
    key: &'a str,
    admin_key: &'a str,
    ledger: &'a std::path::Path,
}

fn print_dev_banner(b: &Banner<'_>) {
    let Banner {
        gw,
        admin,
        sim,
        key,
        admin_key,
        ..
    } = b;
    let ledger = b.ledger.display();
    out(&format!(
        r#"
finovy-gateway dev: the gateway in front of the built-in upstream simulator (demo credentials,
state in memory). Ctrl-C stops both.

  gateway    http://{gw}
  admin      http://{admin}  (/metrics /healthz /readyz)
  console    http://{admin}/console#key={admin_key}   (signed in; the key stays in the tab)
  simulator  http://{sim}  (/_sim/stats /_sim/fault /_sim/reset)
  client key {key}   (client "demo"; new at every start)
  admin key  {admin_key}   (new at every start)
  ledger     {ledger}   (every purchase; this run's own file)

Try:
  export FGW_KEY={key}
  curl -s -X POST http://{gw}/v1/PveMachineHardDisk/open/create \
       -H "Authorization: Bearer $FGW_KEY" -H 'Content-Type: application/json' \
       -d '{{"area": 0, "memory": 20, "isMount": 0}}'
  curl -s http://{gw}/v1/PveMachineHardDisk/open/info/<id from above> -H "Authorization: Bearer $FGW_KEY"
  curl -s -X POST http://{gw}/v1/PveMachineHardDisk/open/getList \
       -H "Authorization: Bearer $FGW_KEY" -H 'Content-Type: application/json' -d '{{"page": 1, "pageSize": 10}}'
  curl -s http://{gw}/v1/PveMachineHardDisk/open/memoryTotal/0 -H "Authorization: Bearer $FGW_KEY"
  curl -s http://{sim}/_sim/stats
  curl -s http://{admin}/metrics | grep finovy_gateway_requests_total
  curl -s http://{admin}/admin/purchases -H "Authorization: Bearer {admin_key}"

"#
    ));
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let shown = path
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    let settings = FileConfig::load(path.as_deref())
        .and_then(|file| Settings::resolve(file, &Overrides::default(), &config::process_env));
    match settings {
        Ok(s) => {
            let mut text = format!(
                "# effective settings from {} (secrets masked)\n{}",
                shown.display(),
                s.to_masked_toml()
            );
            for b in s.serve_blockers() {
                text.push_str(&format!("# warning: serve would refuse to start: {b}\n"));
            }
            text.push_str("# config is valid\n");
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("finovy-gateway: invalid config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(name: &str) -> ExitCode {
    // The entry it prints must check.
    if !config::is_name(name) {
        eprintln!(
            "finovy-gateway: --name {name:?}: expected a name of letters, digits, `.`, `_` and `-`"
        );
        return ExitCode::FAILURE;
    }
    let key = new_key();
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    out(&format!(
        "# Give this key to the service {name:?}; it is shown once and stored nowhere:\n\
         #   {key}\n\
         # Add this to the gateway's config:\n\
         [[clients]]\nname = {name:?}\nkey_sha256 = \"{digest}\"\n"
    ));
    ExitCode::SUCCESS
}
