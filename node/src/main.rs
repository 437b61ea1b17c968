//! The `zorgmesh` binary: certificates, topologies, running a node, and the demo.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use time::{Duration, OffsetDateTime};
use zorgmesh_certs::{
    read_certificate, write_certificate, write_signing_key, CaFiles, CertificateAuthority,
    NodeIdentity, TrustAnchor,
};
use zorgmesh_node::config::NodeConfig;
use zorgmesh_node::node::RunningNode;
use zorgmesh_node::{demo, provision};
use zorgmesh_protocol::NodeRole;
use zorgmesh_topology::Topology;

/// mimalloc, set to give freed memory back to the system at once (see
/// [`settle_allocator`]): after a burst of large Bundles the node returns to about its idle
/// size, where the system malloc keeps most of the burst (`scripts/bench-burst-memory.sh`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc reads its options from the environment when the process starts, before `main`:
/// purge freed memory without delay and commit arena memory only when used. When they are
/// not set (an operator may set their own), the binary runs itself again with them (same
/// process id, same arguments); if that fails it goes on with mimalloc's defaults.
#[cfg(feature = "mimalloc")]
fn settle_allocator() {
    use std::os::unix::process::CommandExt;
    const OPTIONS: [(&str, &str); 2] = [
        ("MIMALLOC_PURGE_DELAY", "0"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ];
    if OPTIONS
        .iter()
        .any(|(name, _)| std::env::var_os(name).is_some())
    {
        return;
    }
    let Ok(myself) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(myself)
        .args(std::env::args_os().skip(1))
        .envs(OPTIONS)
        .exec();
    eprintln!("warning: cannot tune the allocator ({error}); going on with its defaults");
}

#[derive(Parser)]
#[command(
    name = "zorgmesh",
    version,
    about = "A peer-to-peer federated index and replication mesh for health data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the network's trust anchor and node certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check a mesh description or generate a whole local mesh from it.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Register, list and revoke the clients that may call a node's API, and get tokens.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Check a node's access trail (NEN 7513).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Start a local mesh on loopback, load synthetic patients and resolve dossiers.
    Demo(DemoArgs),
    /// Simulate a network in virtual time before changing the real one.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(Subcommand)]
enum SimCommand {
    /// Run a scenario (TOML; see simulation/scenarios/) and write report.json and
    /// summary.txt to the output directory.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Seed of every random choice: the same seed gives the same report.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the report goes.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
    },
    /// Run a scenario under every combination of some settings and write a table of
    /// outcomes per setting (sweep.md, sweep.json, plots, and each run's report).
    Sweep {
        /// The scenario file.
        scenario: PathBuf,
        /// A setting and its values, e.g. `batch_window_ms=50,200,1000`; repeat for more
        /// settings. Short names: batch_window_ms, batch_max_entries, mesh_degree,
        /// sync_interval_ms, latency_ms, jitter_ms, loss, updates, patients, duration_s;
        /// any other setting by its dotted path (links.between... excepted).
        #[arg(long, required = true)]
        vary: Vec<String>,
        /// Seed of every run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the reports go.
        #[arg(long, default_value = "sim-sweep")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a network: CA key and certificate, and the threshold OPRF key dealt over the
    /// evaluator nodes (the CA keeps no share once each evaluator is issued).
    Init {
        /// Network name (a DNS label, e.g. "zorgnet").
        #[arg(long)]
        network: String,
        /// Directory to write ca.crt, ca.key, evaluators.pem and shares/ into.
        #[arg(long)]
        out: PathBuf,
        /// The evaluator nodes (names, comma separated), e.g. one per region.
        #[arg(long, value_delimiter = ',', required = true)]
        evaluators: Vec<String>,
        /// Partial evaluations needed for a patient key (default: a majority).
        #[arg(long)]
        threshold: Option<u16>,
        /// CA validity in days.
        #[arg(long, default_value_t = provision::CA_DAYS)]
        days: i64,
    },
    /// Issue a node key and certificate signed by the network CA.
    Issue(IssueArgs),
    /// Revoke a node's certificate: sign the next revocation list (ca-dir/revocations.pem)
    /// and, with --publish, hand it to a running node, which spreads it over the mesh.
    Revoke {
        /// Directory holding the network's ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate to revoke (PEM), e.g. nodes/<name>/<name>.crt.
        #[arg(long)]
        certificate: PathBuf,
        /// Why (at most 64 bytes), e.g. "key compromised".
        #[arg(long, default_value = "revoked by the network operator")]
        reason: String,
        /// A node's HTTP address (http://host:port) to hand the list to; any node will do.
        #[arg(long)]
        publish: Option<String>,
        /// An admin client's credentials for the node's /admin endpoint ('zorgmesh client
        /// add --scope zorgmesh.admin').
        #[arg(long, env = "ZORGMESH_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
    /// Roll a node to a new key: the CA issues a certificate for the same node and a new
    /// key, written beside the node's files as <name>.next.key and <name>.next.crt; with
    /// --activate, the running node hands its log over to the new key and switches to it
    /// without stopping (POST /admin/rotate).
    Rotate {
        /// Directory holding the network's ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's current certificate (PEM), e.g. nodes/<name>/<name>.crt; the new files
        /// go beside it.
        #[arg(long)]
        certificate: PathBuf,
        /// Validity of the new certificate in days.
        #[arg(long, default_value_t = provision::NODE_CERT_DAYS)]
        days: i64,
        /// The node's HTTP address (http://host:port) to activate the new key on now.
        #[arg(long)]
        activate: Option<String>,
        /// An admin client's credentials for the node's /admin endpoint ('zorgmesh client
        /// add --scope zorgmesh.admin').
        #[arg(long, env = "ZORGMESH_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
    /// Show (and verify) a certificate.
    Show {
        /// The certificate (PEM).
        certificate: PathBuf,
        /// Verify it against this CA certificate (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

#[derive(Args)]
struct IssueArgs {
    /// Directory holding the network's ca.crt and ca.key.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Node name (DNS label).
    #[arg(long)]
    name: String,
    /// URA of the responsible organisation (8 digits).
    #[arg(long)]
    ura: String,
    /// Name of the responsible organisation.
    #[arg(long)]
    organisation: String,
    /// Region of the node.
    #[arg(long)]
    region: String,
    /// institution or replication-platform.
    #[arg(long, default_value = "institution")]
    role: NodeRole,
    /// Kind of care organisation (consent rules name categories): hospital,
    /// general-practice, pharmacy, mental-health, laboratory, care or other.
    #[arg(long, default_value = "other")]
    category: zorgmesh_protocol::consent::OrganisationCategory,
    /// Validity in days.
    #[arg(long, default_value_t = provision::NODE_CERT_DAYS)]
    days: i64,
    /// Directory to write <name>.key and <name>.crt into.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Name every problem in a topology file.
    Check {
        /// The topology (TOML).
        file: PathBuf,
    },
    /// Write the CA, every node's key, certificate and config.
    Generate {
        /// The topology (TOML).
        file: PathBuf,
        /// Output directory (must not hold a CA yet).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node until ctrl-c.
    Run {
        /// The node config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a stopped node's store: read every record against its checksum. Exits 1 when
    /// anything is damaged, naming it.
    Check(StoreArgs),
    /// Take a consistent backup: of a running node (through its admin API, into its
    /// backup_dir), or of a stopped node's store into a file.
    Backup {
        /// A running node's base URL, e.g. http://127.0.0.1:8080 (from the node's host).
        #[arg(long, conflicts_with_all = ["data_dir", "config", "out"])]
        node: Option<String>,
        #[command(flatten)]
        store: OptionalStoreArgs,
        /// The backup file to write (stopped node only).
        #[arg(long)]
        out: Option<PathBuf>,
        /// An admin client's credentials for the node's /admin endpoint ('zorgmesh client
        /// add --scope zorgmesh.admin').
        #[arg(long, env = "ZORGMESH_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
    /// Restore a backup into a new data directory (then start the node on it: it takes
    /// what it signed since the backup back from its peers and signs on after it).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// The engine of the restored store: sled, redb or fjall (default: the config's
        /// storage_engine, else sled). Restoring into another engine migrates the store.
        #[arg(long)]
        engine: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the access trail against the node's signed checkpoints and name every
    /// altered, removed, inserted or reordered entry. Reads the files only: the node may
    /// run. Exits 1 when anything is wrong.
    Verify {
        /// The node's data directory.
        #[arg(
            long = "data",
            visible_alias = "data-dir",
            required_unless_present = "config"
        )]
        data_dir: Option<PathBuf>,
        /// The node's config: its data_dir, and its certificate's key as the only key that
        /// may sign checkpoints.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client (SMART Backend Services). Without --public-key a P-384 key pair is
    /// made and the client's credentials (its private key and the node's token endpoint)
    /// written to --credentials, owner-only. A running node takes the client at once.
    Add {
        /// The node's config (TOML); its auth.clients_file is edited.
        #[arg(long)]
        config: PathBuf,
        /// The client's id (client_id): 1 to 64 of A-Z a-z 0-9 . _ -.
        #[arg(long)]
        id: String,
        /// A name people recognise.
        #[arg(long, default_value = "")]
        name: String,
        /// A scope it may be granted, e.g. 'system/*.rs', 'system/Observation.cruds',
        /// 'patient/*.rs' (a patient app), 'zorgmesh.admin' (the /admin endpoints). Repeat.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Makes it a patient's app bound to this patient: it reads only that patient's own
        /// dossier.
        #[arg(long)]
        patient_bsn: Option<String>,
        /// The client's own public key (a JWK or a JWK Set, JSON) instead of a made one.
        #[arg(long, conflicts_with = "credentials")]
        public_key: Option<PathBuf>,
        /// Where the made credentials go (default: <id>.credentials.json beside the config).
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
    /// List the registered clients.
    List {
        /// The node's config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke a client: its tokens stop working at once.
    Revoke {
        /// The node's config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The client's id.
        #[arg(long)]
        id: String,
    },
    /// Get an access token with a client's credentials and print it (for curl:
    /// TOKEN=$(zorgmesh client token --credentials ehr.credentials.json)).
    Token {
        /// The client's credentials file.
        #[arg(long, env = "ZORGMESH_CREDENTIALS")]
        credentials: PathBuf,
        /// The scopes to ask for (default: every scope the client is registered for).
        #[arg(long)]
        scope: Option<String>,
    },
}

/// Which store: a node config's `data_dir`, or a directory.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// The node config (TOML); its data_dir is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Like [`StoreArgs`], optional.
#[derive(Args)]
#[group(required = false, multiple = false)]
struct OptionalStoreArgs {
    /// The node config (TOML); its data_dir is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn store_dir(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (config, data_dir) {
        (Some(config), _) => Ok(NodeConfig::load(&config)?.data_dir),
        (None, Some(dir)) => Ok(dir),
        (None, None) => bail!("say which store: --config or --data-dir"),
    }
}

fn now_ms() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

#[derive(Args)]
struct DemoArgs {
    /// Seed of the synthetic patient generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of synthetic patients.
    #[arg(long, default_value_t = 25)]
    patients: usize,
    /// Number of dossiers to resolve.
    #[arg(long, default_value_t = 5)]
    resolve: usize,
    /// Keep the mesh up after the summary and print each node's FHIR base URL.
    #[arg(long)]
    keep_running: bool,
    /// Keep the mesh's files here (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// POSTs to a node's admin endpoint (a PEM body when given) with a token for the admin
/// client in `credentials`; the answer's text, or an error that says what the node refused.
async fn post_admin(
    url: &str,
    pem: Option<Vec<u8>>,
    refused: &str,
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let Some(credentials) = credentials else {
        bail!("the node's admin endpoints need an admin client's credentials: --credentials FILE (or ZORGMESH_CREDENTIALS), made by 'zorgmesh client add --scope zorgmesh.admin'");
    };
    let credentials = zorgmesh_node::auth::assertion::ClientCredentials::read(credentials)?;
    let http = reqwest::Client::new();
    let grant = zorgmesh_node::auth::request_token(
        &http,
        &credentials,
        Some(zorgmesh_node::auth::scope::ADMIN_SCOPE),
    )
    .await
    .context("cannot get an admin token")?;
    let mut request = http.post(url).bearer_auth(grant.access_token);
    if let Some(pem) = pem {
        request = request
            .header("content-type", "application/x-pem-file")
            .body(pem);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} {refused} ({status}): {text}");
    }
    Ok(text)
}

async fn client_command(command: ClientCommand) -> anyhow::Result<()> {
    use zorgmesh_node::auth;
    match command {
        ClientCommand::Add {
            config: config_path,
            id,
            name,
            scopes,
            patient_bsn,
            public_key,
            credentials,
        } => {
            let config = NodeConfig::load(&config_path)?;
            let public_keys = public_key
                .as_deref()
                .map(auth::registration::read_public_keys)
                .transpose()?;
            let token_endpoint = format!(
                "{}{}",
                config.public_url(config.http_listen),
                auth::TOKEN_PATH
            );
            let credentials_path = credentials.unwrap_or_else(|| {
                config_path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(format!("{id}.credentials.json"))
            });
            if public_keys.is_none() && credentials_path.exists() {
                bail!(
                    "{} exists: refusing to overwrite credentials (say --credentials FILE)",
                    credentials_path.display()
                );
            }
            zorgmesh_node::at_rest::restrict_new_files();
            let registered = auth::registration::add_client(
                &config.auth.clients_file,
                auth::registration::NewClient {
                    client_id: id,
                    name,
                    scopes: scopes.join(" "),
                    patient_bsn,
                    public_keys,
                },
                &token_endpoint,
                auth::now_secs(),
            )?;
            let client = &registered.client;
            println!(
                "client {} registered in {} ({:?}; scopes {})",
                client.client_id,
                config.auth.clients_file.display(),
                client.kind,
                client.scopes
            );
            if let Some(credentials) = &registered.credentials {
                auth::registration::write_credentials(&credentials_path, credentials)?;
                println!(
                    "credentials (its private key; owner-only) in {}",
                    credentials_path.display()
                );
                println!(
                    "get a token: zorgmesh client token --credentials {}",
                    credentials_path.display()
                );
            } else {
                println!("the client signs its assertions with its own key; token endpoint {token_endpoint}");
            }
        }
        ClientCommand::List { config } => {
            let config = NodeConfig::load(&config)?;
            let file = auth::clients::ClientsFile::read(&config.auth.clients_file)?;
            if file.clients.is_empty() {
                println!("no clients in {}", config.auth.clients_file.display());
            }
            for client in &file.clients {
                let state = match client.revoked_at {
                    Some(at) => format!("revoked at {}", format_secs(at)),
                    None => "active".to_owned(),
                };
                println!(
                    "{:<24} {:<12} {:<28} {} key(s), registered {}, {state}{}",
                    client.client_id,
                    format!("{:?}", client.kind),
                    client.scopes,
                    client.jwks.keys.len(),
                    format_secs(client.registered_at),
                    if client.name.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", client.name)
                    }
                );
            }
        }
        ClientCommand::Revoke { config, id } => {
            let config = NodeConfig::load(&config)?;
            let was_active = auth::registration::revoke_client(
                &config.auth.clients_file,
                &id,
                auth::now_secs(),
            )?;
            if was_active {
                println!("client {id} revoked: its tokens stop working at once");
            } else {
                println!("client {id} was revoked already");
            }
        }
        ClientCommand::Token { credentials, scope } => {
            let credentials = auth::assertion::ClientCredentials::read(&credentials)?;
            let grant =
                auth::request_token(&reqwest::Client::new(), &credentials, scope.as_deref())
                    .await?;
            eprintln!(
                "token for {} (scopes {}), valid {} s",
                credentials.client_id, grant.scope, grant.expires_in
            );
            println!("{}", grant.access_token);
        }
    }
    Ok(())
}

fn format_secs(secs: u64) -> String {
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "mimalloc")]
    settle_allocator();
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Node(_) => "warn,zorgmesh_node=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Certs(CertsCommand::Init {
            network,
            out,
            evaluators,
            threshold,
            days,
        }) => {
            let files = CaFiles::in_dir(&out);
            files.ensure_absent()?;
            let ca = CertificateAuthority::create(
                &network,
                provision::new_key(),
                OffsetDateTime::now_utc(),
                days,
            )
            .map_err(anyhow::Error::msg)?;
            let threshold = threshold.unwrap_or(evaluators.len() as u16 / 2 + 1);
            let keys = zorgmesh_certs::deal_evaluator_keys(
                &ca,
                &evaluators,
                threshold,
                (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64,
            )
            .map_err(|e| anyhow::anyhow!("cannot deal the OPRF key: {e}"))?;
            files.write(&ca, &keys)?;
            println!("network {network:?} created:");
            println!(
                "  {}  trust anchor: give it to every node",
                files.certificate.display()
            );
            println!(
                "  {}  CA key: keep it offline (owner-only)",
                files.key.display()
            );
            println!(
                "  {}  evaluator set ({threshold} of {}: {}): give it to every node",
                files.evaluator_set.display(),
                evaluators.len(),
                evaluators.join(", ")
            );
            println!(
                "  {}/  one key share per evaluator: 'certs issue' moves each to its node; none stays here",
                files.pending_shares.display()
            );
        }
        Command::Certs(CertsCommand::Issue(args)) => {
            let files = CaFiles::in_dir(&args.ca_dir);
            let ca = files.load_authority()?;
            let identity = NodeIdentity {
                name: args.name.clone(),
                organisation_ura: args.ura,
                organisation_name: args.organisation,
                region: args.region,
                role: args.role,
                category: args.category,
            };
            identity.validate().map_err(anyhow::Error::msg)?;
            if args.days <= 0 {
                bail!("--days must be positive");
            }
            let now = OffsetDateTime::now_utc();
            let key = provision::new_key();
            let der = ca
                .issue(
                    &identity,
                    &key,
                    now - Duration::minutes(5),
                    now + Duration::days(args.days),
                )
                .map_err(anyhow::Error::msg)?;
            let key_path = args.out.join(format!("{}.key", args.name));
            let cert_path = args.out.join(format!("{}.crt", args.name));
            if key_path.exists() {
                bail!(
                    "{} already exists: refusing to overwrite a node key",
                    key_path.display()
                );
            }
            write_signing_key(&key_path, &key)?;
            write_certificate(&cert_path, &der)?;
            let share_path = args.out.join(format!("{}.share", args.name));
            if files.hand_out_share(&args.name, &share_path)? {
                println!(
                    "evaluator {:?}: its OPRF key share is now {} (owner-only) and no longer in {}",
                    args.name,
                    share_path.display(),
                    files.pending_shares.display()
                );
            }
            println!(
                "issued {} for node {:?}, valid {} days; key in {}",
                cert_path.display(),
                args.name,
                args.days,
                key_path.display()
            );
        }
        Command::Certs(CertsCommand::Revoke {
            ca_dir,
            certificate,
            reason,
            publish,
            credentials,
        }) => {
            let files = CaFiles::in_dir(&ca_dir);
            let der = read_certificate(&certificate)?;
            let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
            let list = files.revoke(&der, &reason, now_ms)?;
            println!(
                "revocation list {} ({}): {} node(s) revoked",
                list.body.sequence,
                files.revocations.display(),
                list.body.revocations.len()
            );
            for revocation in &list.body.revocations {
                println!(
                    "  {} ({}): {}",
                    revocation.name, revocation.node, revocation.reason
                );
            }
            match publish {
                Some(base) => {
                    let url = format!("{}/admin/revocations", base.trim_end_matches('/'));
                    let pem = std::fs::read(&files.revocations)?;
                    let text = post_admin(&url, Some(pem), "refused the list", credentials.as_deref()).await?;
                    println!("published through {url}: {text}");
                }
                None => println!(
                    "hand it to any node: zorgmesh certs revoke ... --publish http://<node> --credentials <admin client>, or curl -H \"Authorization: Bearer $TOKEN\" --data-binary @{} http://<node>/admin/revocations",
                    files.revocations.display()
                ),
            }
        }
        Command::Certs(CertsCommand::Rotate {
            ca_dir,
            certificate,
            days,
            activate,
            credentials,
        }) => {
            let key_files = zorgmesh_node::rotation::issue_next(&ca_dir, &certificate, days)?;
            let next_cert = key_files.next_certificate();
            let next_key = key_files.next_key();
            let key = zorgmesh_certs::read_signing_key(&next_key)?;
            let verified = zorgmesh_certs::CaFiles::in_dir(&ca_dir)
                .load_anchor()?
                .verify_node_certificate(&read_certificate(&next_cert)?, None)?;
            println!(
                "issued {} for node {:?} with a new key ({}), valid {days} days; key in {} (owner-only)",
                next_cert.display(),
                verified.identity.name,
                zorgmesh_protocol::NodeId(key.verifying_key().to_bytes()),
                next_key.display()
            );
            match activate {
                Some(base) => {
                    let url = format!("{}/admin/rotate", base.trim_end_matches('/'));
                    let text = post_admin(&url, None, "did not rotate", credentials.as_deref()).await?;
                    println!("activated through {url}: {text}");
                    println!(
                        "once peers have caught up, revoke the old certificate: zorgmesh certs revoke --ca-dir {} --certificate {}",
                        ca_dir.display(),
                        key_files.retired_certificate().display()
                    );
                }
                None => println!(
                    "activate it on the running node: zorgmesh certs rotate ... --activate http://<node> --credentials <admin client> (POST /admin/rotate)"
                ),
            }
        }
        Command::Certs(CertsCommand::Show { certificate, ca }) => {
            let der = read_certificate(&certificate)?;
            let anchor_der = match &ca {
                Some(path) => read_certificate(path)?,
                None => {
                    // A CA certificate shows itself.
                    if let Ok(anchor) = TrustAnchor::from_der(&der) {
                        println!("CA certificate of network {:?}", anchor.network());
                        println!("  public key  {}", hex::encode(anchor.public_key()));
                        return Ok(());
                    }
                    bail!("give --ca <ca.crt> to verify and show a node certificate");
                }
            };
            let anchor =
                TrustAnchor::from_der(&anchor_der).context("the --ca file is not a network CA")?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let verified = anchor.verify_node_certificate(&der, None)?;
            let fmt = |t: i64| {
                OffsetDateTime::from_unix_timestamp(t)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default()
            };
            println!("node certificate {}", certificate.display());
            println!("  node          {}", verified.identity.name);
            println!(
                "  organisation  {} (URA {})",
                verified.identity.organisation_name, verified.identity.organisation_ura
            );
            println!("  region        {}", verified.identity.region);
            println!("  role          {}", verified.identity.role);
            println!("  category      {}", verified.identity.category);
            println!("  public key    {}", verified.node.to_hex());
            println!(
                "  valid         {} to {}",
                fmt(verified.not_before),
                fmt(verified.not_after)
            );
            println!("  network       {}", anchor.network());
            match anchor.verify_node_certificate(&der, Some(now)) {
                Ok(_) => println!("  status        valid now"),
                Err(e) => {
                    println!("  status        NOT VALID: {e}");
                    bail!("{e}");
                }
            }
        }
        Command::Topology(TopologyCommand::Check { file }) => {
            let topology = Topology::load(&file)?;
            topology.check()?;
            println!(
                "{}: network {:?}, {} regions, {} nodes: no problems",
                file.display(),
                topology.network,
                topology.regions.len(),
                topology.nodes.len()
            );
        }
        Command::Topology(TopologyCommand::Generate { file, out }) => {
            let topology = Topology::load(&file)?;
            let nodes = provision::generate(&topology, &out, OffsetDateTime::now_utc())?;
            println!(
                "generated network {:?} in {}:",
                topology.network,
                out.display()
            );
            for node in nodes {
                println!(
                    "  zorgmesh node run --config {}",
                    node.config_path().display()
                );
            }
        }
        Command::Node(NodeCommand::Run { config }) => {
            let config = NodeConfig::load(&config)?;
            let node = RunningNode::start(config).await?;
            println!(
                "node {} running: FHIR API at {}",
                node.name(),
                node.base_url()
            );
            node.run_until_ctrl_c().await?;
        }
        Command::Audit(AuditCommand::Verify { data_dir, config }) => {
            let (dir, keys) = match (&config, data_dir) {
                (Some(path), dir) => {
                    let config = NodeConfig::load(path)?;
                    let anchor = zorgmesh_certs::TrustAnchor::from_der(
                        &zorgmesh_certs::read_certificate(&config.trust.ca_certificate)?,
                    )?;
                    let node = anchor
                        .verify_node_certificate(
                            &zorgmesh_certs::read_certificate(&config.trust.node_certificate)?,
                            None,
                        )
                        .with_context(|| {
                            format!(
                                "{} is not a certificate of this network",
                                config.trust.node_certificate.display()
                            )
                        })?;
                    (dir.unwrap_or(config.data_dir), Some([node.node].into()))
                }
                (None, Some(dir)) => (dir, None),
                (None, None) => bail!("say which trail: --data DIR or --config FILE"),
            };
            let report = zorgmesh_node::audit::verify::verify_dir(&dir, keys.as_ref())?;
            if !report.is_intact() {
                bail!("{report}");
            }
            print!("{report}");
        }
        Command::Node(NodeCommand::Check(store)) => {
            let dir = store_dir(store.config, store.data_dir)?;
            let report = zorgmesh_node::storage::Storage::check(&dir)?;
            if report.is_damaged() {
                bail!("{report}");
            }
            println!("{report}");
            for (name, tree) in &report.trees {
                let state = tree.state.unwrap_or_default();
                println!(
                    "  {name:<17} {:>10} records {:>14} bytes   commit {}",
                    tree.records, tree.bytes, state.generation
                );
            }
            println!("content digest {}", report.content_digest());
        }
        Command::Node(NodeCommand::Backup {
            node,
            store,
            out,
            credentials,
        }) => {
            if let Some(node) = node {
                let url = format!("{}/admin/backup", node.trim_end_matches('/'));
                let text = post_admin(&url, None, "took no backup", credentials.as_deref()).await?;
                let taken: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{url} answered something else: {text}"))?;
                println!(
                    "backup written by the node to {} ({} records, {} bytes; writers waited {} ms)",
                    taken["path"].as_str().unwrap_or("?"),
                    taken["records"],
                    taken["bytes"],
                    taken["elapsed_ms"]
                );
                println!(
                    "content digest {}",
                    taken["content_digest"].as_str().unwrap_or("?")
                );
            } else {
                let dir = store_dir(store.config, store.data_dir)?;
                let Some(out) = out else {
                    bail!("say where the backup goes: --out FILE (or back up a running node with --node URL)");
                };
                if out.exists() {
                    bail!("{} exists: refusing to overwrite it", out.display());
                }
                zorgmesh_node::at_rest::restrict_new_files();
                let storage = zorgmesh_node::storage::Storage::open(&dir)
                    .with_context(|| format!("cannot back up {}", dir.display()))?;
                let summary = storage.backup_to(&out, now_ms())?;
                println!(
                    "backup of {} written to {} ({} records, {} bytes, {} ms)",
                    dir.display(),
                    out.display(),
                    summary.records,
                    summary.bytes,
                    summary.elapsed_ms
                );
                println!("content digest {}", summary.content_digest);
            }
        }
        Command::Node(NodeCommand::Restore {
            from,
            store,
            engine,
        }) => {
            let configured = match &store.config {
                Some(config) => NodeConfig::load(config)?.storage_engine,
                None => Default::default(),
            };
            let engine = match engine.as_deref() {
                None => configured,
                Some("sled") => zorgmesh_node::storage::EngineKind::Sled,
                Some("redb") => zorgmesh_node::storage::EngineKind::Redb,
                Some("fjall") => zorgmesh_node::storage::EngineKind::Fjall,
                Some(other) => bail!("--engine {other:?}: the engines are sled, redb and fjall"),
            };
            let dir = store_dir(store.config, store.data_dir)?;
            zorgmesh_node::at_rest::restrict_new_files();
            let summary = zorgmesh_node::storage::Storage::restore(&from, &dir, engine)?;
            println!(
                "restored {} records from {} into {} ({engine}) in {} ms",
                summary.records,
                from.display(),
                dir.display(),
                summary.elapsed_ms
            );
            println!("content digest {}", summary.content_digest);
        }
        Command::Client(command) => client_command(command).await?,
        Command::Sim(command) => {
            tokio::task::spawn_blocking(move || sim_command(command)).await??
        }
        Command::Demo(args) => {
            if args.patients == 0 {
                bail!("--patients must be at least 1");
            }
            demo::run(demo::DemoOptions {
                seed: args.seed,
                patients: args.patients,
                resolve: args.resolve.min(args.patients),
                keep_running: args.keep_running,
                dir: args.dir,
            })
            .await?;
        }
    }
    Ok(())
}

/// A progress bar over simulated seconds (hidden when stderr is not a terminal).
fn sim_progress(prefix: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} simulated s",
        )
        .expect("a valid progress template"),
    );
    bar.set_prefix(prefix);
    bar
}

fn sim_command(command: SimCommand) -> anyhow::Result<()> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let create = |dir: &PathBuf| {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
    };
    match command {
        SimCommand::Run {
            scenario,
            seed,
            out,
        } => {
            let parsed = zorgmesh_simulation::Scenario::parse(&read(&scenario)?)
                .with_context(|| format!("in {}", scenario.display()))?;
            create(&out)?;
            let bar = sim_progress(parsed.name.clone());
            let report = zorgmesh_simulation::run_observed(&parsed, seed, &mut |p| {
                bar.set_length(p.expected_s.max(p.simulated_s));
                bar.set_position(p.simulated_s);
            });
            bar.finish_and_clear();
            std::fs::write(out.join("report.json"), report.to_json())?;
            std::fs::write(out.join("summary.txt"), report.summary() + "\n")?;
            let plots = zorgmesh_simulation::plot::write_report_plots(&report, &out)?;
            println!("{}", report.summary());
            println!("report: {}", out.join("report.json").display());
            for plot in plots {
                println!("plot: {}", plot.display());
            }
        }
        SimCommand::Sweep {
            scenario,
            vary,
            seed,
            out,
        } => {
            use zorgmesh_simulation::sweep;
            let text = read(&scenario)?;
            let variations = vary
                .iter()
                .map(|v| sweep::Variation::parse(v))
                .collect::<Result<Vec<_>, _>>()?;
            let runs = sweep::combinations(&text, &variations)
                .with_context(|| format!("in {}", scenario.display()))?;
            create(&out)?;
            let total = runs.len();
            let mut rows = Vec::with_capacity(total);
            let mut name = String::new();
            for (n, (setting, parsed)) in runs.into_iter().enumerate() {
                name = parsed.name.clone();
                let label = sweep::label(&setting);
                let bar = sim_progress(format!("{}/{total} {label}", n + 1));
                let report = zorgmesh_simulation::run_observed(&parsed, seed, &mut |p| {
                    bar.set_length(p.expected_s.max(p.simulated_s));
                    bar.set_position(p.simulated_s);
                });
                bar.finish_and_clear();
                let dir = out.join(label.replace([' ', '='], "_"));
                create(&dir)?;
                std::fs::write(dir.join("report.json"), report.to_json())?;
                std::fs::write(dir.join("summary.txt"), report.summary() + "\n")?;
                println!(
                    "{label}: p99 {} ms, {:.2} bytes per useful byte, {}",
                    report.propagation.p99_ms,
                    report.traffic.received_per_useful_byte,
                    if report.converged {
                        "converged"
                    } else {
                        "did NOT converge"
                    }
                );
                rows.push(sweep::SweepRow { setting, report });
            }
            let sweep = sweep::SweepReport::new(name, seed, rows);
            std::fs::write(out.join("sweep.json"), sweep.to_json())?;
            std::fs::write(out.join("sweep.md"), sweep.table())?;
            let plots = zorgmesh_simulation::plot::write_sweep_plots(&sweep, &out)?;
            println!("\n{}", sweep.table());
            println!("table: {}", out.join("sweep.md").display());
            for plot in plots {
                println!("plot: {}", plot.display());
            }
        }
    }
    Ok(())
}
