//! `riskstream auth`: edits a tokens file (`[auth] tokens_file` of the services).
//!
//! `add-token` prints the new token once on stdout (and nothing else there, so
//! `TOKEN=$(riskstream auth add-token ...)` works) and stores only its SHA-256; `list` shows
//! names, scopes and creation times; `revoke` removes a token. Services pick the change up
//! within `auth.reload_interval`, without a restart.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use riskstream_auth::{Scope, TokenFile};

use crate::setup::Failure;

#[derive(Debug, Args, Clone)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum AuthCommand {
    /// Create a token: prints it once, stores only its SHA-256 (the file is created if missing).
    AddToken(AddTokenArgs),
    /// List the tokens of a file: name, scopes, creation time (never a token).
    List(FileArg),
    /// Remove a token by name; services refuse it from their next reload on.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args, Clone)]
pub struct FileArg {
    /// The tokens file (TOML).
    #[arg(long)]
    pub file: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct AddTokenArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Comma-separated scopes: events:write, decide, decisions:read, traces:read,
    /// traces:write, metrics:read, admin (admin grants every scope).
    #[arg(long)]
    pub scopes: String,
    /// A unique name for the token's holder (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub name: String,
    /// This token's own requests per second (0: unlimited); default: auth.rate_limit_per_second.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// This token's own burst; default: auth.rate_limit_burst.
    #[arg(long)]
    pub burst: Option<u32>,
}

#[derive(Debug, Args, Clone)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// The token's name.
    #[arg(long)]
    pub name: String,
}

fn usage(e: riskstream_auth::AuthError) -> Failure {
    Failure::Usage(vec![e.to_string()])
}

pub fn run(args: AuthArgs) -> Result<(), Failure> {
    match args.command {
        AuthCommand::AddToken(a) => {
            let scopes = Scope::parse_list(&a.scopes).map_err(usage)?;
            if scopes.is_empty() {
                return Err(Failure::Usage(vec![format!(
                    "--scopes needs at least one of {}",
                    Scope::names().join(", ")
                )]));
            }
            let path = &a.file.file;
            let mut file = TokenFile::load_or_default(path).map_err(usage)?;
            let token = file
                .add(&a.name, scopes.clone(), chrono::Utc::now())
                .map_err(usage)?;
            if let Some(entry) = file.tokens.last_mut() {
                entry.rate_limit_per_second = a.rate_limit;
                entry.rate_limit_burst = a.burst;
            }
            file.save(path).map_err(usage)?;
            println!("{token}");
            let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            eprintln!(
                "token {:?} ({}) added to {}; only its SHA-256 is stored: keep the token above, it is not shown again",
                a.name,
                scopes.join(","),
                path.display()
            );
            Ok(())
        }
        AuthCommand::List(a) => {
            let file = TokenFile::load(&a.file).map_err(usage)?;
            println!("{:<24} {:<48} CREATED", "NAME", "SCOPES");
            for t in &file.tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let limit = match (t.rate_limit_per_second, t.rate_limit_burst) {
                    (None, None) => String::new(),
                    (r, b) => format!(
                        "  rate_limit={} burst={}",
                        r.map_or("default".into(), |r| r.to_string()),
                        b.map_or("default".into(), |b| b.to_string())
                    ),
                };
                println!(
                    "{:<24} {:<48} {}{limit}",
                    t.name,
                    scopes.join(","),
                    t.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            Ok(())
        }
        AuthCommand::Revoke(a) => {
            let path = &a.file.file;
            let mut file = TokenFile::load(path).map_err(usage)?;
            file.revoke(&a.name).map_err(usage)?;
            file.save(path).map_err(usage)?;
            eprintln!("token {:?} revoked in {}", a.name, path.display());
            Ok(())
        }
    }
}
