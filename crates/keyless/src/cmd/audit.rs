//! `keyless audit verify|proof|checkpoint|export`.
//!
//! These read the store directly rather than asking the running fabric: a
//! verifier that trusted the server it checks would prove nothing, and they
//! must work while the fabric is down. SQLite's WAL lets them read beside a
//! running writer.

use std::io::Write;

use anyhow::Context;
use base64::Engine;
use keyless_audit::AuditError;
use keyless_store::Store;

use crate::cli::{AuditCommand, AuditStoreArgs};
use crate::{CliError, CliResult};

fn b64(h: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

async fn open_store(args: &AuditStoreArgs) -> CliResult<Store> {
    let store = match &args.database_url {
        Some(url) => Store::open(url).await,
        None => {
            let path = args.data_dir.data_dir.join("keyless.db");
            if !path.exists() {
                return Err(CliError::Failed(anyhow::anyhow!(
                    "no Keyless database at `{}` (use --data-dir or --database-url)",
                    path.display()
                )));
            }
            Store::open_sqlite(&path).await
        }
    };
    Ok(store.context("cannot open the store")?)
}

pub async fn run(cmd: AuditCommand) -> CliResult {
    match cmd {
        AuditCommand::Verify(args) => {
            let store = open_store(&args).await?;
            // With the key manager at hand, also catch a forged checkpoint key
            // smuggled into the database.
            let keys_dir = args.data_dir.data_dir.join("keys");
            let result = match keyless_store::FileKeyManager::open(&keys_dir) {
                Ok(km) if keys_dir.exists() => keyless_audit::verify_with_keys(&store, &km).await,
                _ => keyless_audit::verify(&store).await,
            };
            match result {
                Ok(report) => {
                    println!(
                        "verified {} entries, root {}, {} checkpoints consistent",
                        report.size,
                        b64(&report.root),
                        report.checkpoints
                    );
                    Ok(())
                }
                Err(AuditError::Tampered(t)) => {
                    let at = match (t.first_bad_index, t.checkpoint) {
                        (Some(i), _) => format!("entry {i}"),
                        (None, Some(c)) => format!("checkpoint {c}"),
                        (None, None) => "the log".to_owned(),
                    };
                    Err(CliError::Failed(anyhow::anyhow!(
                        "audit log tampered at {at} ({:?}): {}",
                        t.kind,
                        t.reason
                    )))
                }
                Err(e) => Err(CliError::Failed(e.into())),
            }
        }
        AuditCommand::Proof { store, index } => {
            let store = open_store(&store).await?;
            let proof = keyless_audit::prove_entry(&store, index)
                .await
                .map_err(|e| CliError::Failed(e.into()))?;
            println!("entry {} of {}", proof.proof.index, proof.checkpoint.size);
            println!("leaf_hash {}", b64(&proof.proof.leaf_hash));
            for (i, h) in proof.proof.hashes.iter().enumerate() {
                println!("hash[{i}] {}", b64(h));
            }
            println!("root {}", b64(&proof.checkpoint.root));
            println!("event {}", proof.entry.json);
            proof.check().map_err(|e| {
                CliError::Failed(anyhow::anyhow!(
                    "inclusion proof of entry {index} does not verify: {e}"
                ))
            })?;
            println!(
                "verified: entry {index} is included in checkpoint {} signed by {}",
                proof.checkpoint.seq, proof.checkpoint.key_name
            );
            Ok(())
        }
        AuditCommand::Checkpoint(args) => {
            let store = open_store(&args).await?;
            let checkpoint = keyless_audit::latest_checkpoint(&store)
                .await
                .map_err(|e| CliError::Failed(e.into()))?
                .ok_or_else(|| anyhow::anyhow!("no checkpoint has been issued yet"))?;
            print!("{}", checkpoint.note);
            Ok(())
        }
        AuditCommand::Export { store, since } => {
            let store = open_store(&store).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let count = keyless_audit::export(&store, since, &mut out)
                .await
                .map_err(|e| CliError::Failed(e.into()))?;
            out.flush().context("writing the export")?;
            eprintln!("exported {count} entries");
            Ok(())
        }
    }
}
