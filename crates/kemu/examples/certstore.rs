//! Manages a kemu machine certificate store from the command line.
//!
//! ```text
//! cargo run -p kemu --example certstore -- --store DIR generate --ca-out ca.pem localhost 127.0.0.1
//! cargo run -p kemu --example certstore -- --store DIR import chain.pem key.pem
//! cargo run -p kemu --example certstore -- --store DIR trust ca.pem
//! ```
//! Each command prints the thumbprint a credential names (SCHANNEL_CERT_HASH_STORE, store "MY").

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kemu::{CertStore, TestCa, Validity};

#[derive(Parser)]
#[command(about = "kemu's emulated LocalMachine certificate store (MY and Root)")]
struct Args {
    /// The store's folder (created if missing).
    #[arg(long)]
    store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes a throwaway CA (trusted in Root) and a leaf for NAMES in MY.
    Generate {
        /// Also write the CA certificate here (for peers that must trust it).
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// DNS names or IP addresses of the leaf.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Imports a PEM chain (leaf first) and its key into MY.
    Import { chain: PathBuf, key: PathBuf },
    /// Trusts a CA certificate (PEM) for client-side validation.
    Trust { ca: PathBuf },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = CertStore::open(&args.store)?;
    match args.command {
        Command::Generate { ca_out, names } => {
            let ca = TestCa::generate("kemu test CA")?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let issued = ca.issue(&names, Validity::Current)?;
            store.add_root_pem(ca.cert_pem().as_bytes())?;
            if let Some(path) = ca_out {
                std::fs::write(path, ca.cert_pem())?;
            }
            println!(
                "{}",
                store.import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())?
            );
        }
        Command::Import { chain, key } => println!("{}", store.import_pem_files(&chain, &key)?),
        Command::Trust { ca } => println!("{}", store.add_root_pem(&std::fs::read(ca)?)?),
    }
    Ok(())
}
