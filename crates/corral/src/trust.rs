//! `corral config trust`: the server's trusted client certificates and trust tokens.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use corral_api::{Certificate, CertificateAddToken, Operation};
use corral_client::{encode_segment, Client};

use crate::output::{print_list, yaml, Format, Table};

#[derive(Subcommand)]
#[command(defer = true)]
pub enum TrustCmd {
    /// Make a one-use trust token for a new client (printed; give it to `corral remote add`)
    #[command(
        after_help = "Examples:\n  corral config trust add laptop\n  corral config trust add ci --restricted --projects default\n\n\
                            The server must listen on the network (`corral config set core.https_address :8443`). \
                            Tokens expire after core.remote_token_expiry when it is set."
    )]
    Add {
        /// The name the client's certificate gets
        name: String,
        /// Limit the client to the projects of --projects (and no server-wide changes)
        #[arg(long)]
        restricted: bool,
        /// The projects a restricted client may use, comma-separated
        #[arg(long, value_delimiter = ',')]
        projects: Vec<String>,
    },
    /// Trust a client certificate from a PEM file
    #[command(after_help = "Example:\n  corral config trust add-certificate client.crt --name laptop")]
    AddCertificate {
        file: std::path::PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// client or metrics
        #[arg(long = "type", default_value = "client")]
        kind: String,
        #[arg(long)]
        restricted: bool,
    },
    /// List the trusted certificates
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the trust tokens not used yet
    ListTokens {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a trust token by the client name it was made for
    RevokeToken { name: String },
    /// Show a trusted certificate (fingerprint or a unique prefix of it; `remote:` before it)
    Show { fingerprint: String },
    /// Stop trusting a certificate
    #[command(alias = "rm")]
    Remove { fingerprint: String },
}

fn token_of(op: &Operation) -> Option<CertificateAddToken> {
    let m = &op.metadata;
    Some(CertificateAddToken {
        client_name: m["request"]["name"].as_str()?.to_string(),
        fingerprint: m["fingerprint"].as_str()?.to_string(),
        addresses: m["addresses"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        secret: m["secret"].as_str()?.to_string(),
        expires_at: m["expiresAt"].as_str().unwrap_or("0001-01-01T00:00:00Z").to_string(),
    })
}

fn pending_tokens(c: &Client) -> Result<Vec<(Operation, CertificateAddToken)>> {
    let ops: serde_json::Value = c.get("/1.0/operations?recursion=1")?;
    let mut out = Vec::new();
    for op in ops["running"].as_array().into_iter().flatten() {
        let Ok(op) = serde_json::from_value::<Operation>(op.clone()) else {
            continue;
        };
        if op.class != corral_api::OperationClass::Token {
            continue;
        }
        if let Some(t) = token_of(&op) {
            out.push((op, t));
        }
    }
    Ok(out)
}

pub fn trust(c: &Client, cmd: TrustCmd) -> Result<()> {
    match cmd {
        TrustCmd::Add {
            name,
            restricted,
            projects,
        } => {
            let name = crate::remotes::local_name(&name)?.to_string();
            let resp = c.post(
                "/1.0/certificates",
                &serde_json::json!({
                    "name": name, "type": "client", "token": true, "restricted": restricted, "projects": projects,
                }),
            )?;
            let op: Operation =
                serde_json::from_value(resp.metadata.clone()).context("the server sent no token operation")?;
            let token = token_of(&op).context("the server's token operation lacks the token's data")?;
            outln!("Client {name} certificate add token:");
            outln!("{}", token.encode());
        }
        TrustCmd::AddCertificate {
            file,
            name,
            kind,
            restricted,
        } => {
            let pem = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            c.post(
                "/1.0/certificates",
                &serde_json::json!({
                    "certificate": pem, "name": name.unwrap_or_default(), "type": kind, "restricted": restricted,
                }),
            )?;
        }
        TrustCmd::List { format } => {
            let certs: Vec<Certificate> = c.get("/1.0/certificates?recursion=1")?;
            let mut t = Table::new(["NAME", "TYPE", "FINGERPRINT", "RESTRICTED"]);
            for cert in &certs {
                t.row(vec![
                    cert.name.clone(),
                    cert.kind.clone(),
                    cert.fingerprint.chars().take(12).collect(),
                    if cert.restricted { "YES" } else { "NO" }.into(),
                ]);
            }
            print_list(format, &t, &certs)?;
        }
        TrustCmd::ListTokens { format } => {
            let tokens = pending_tokens(c)?;
            let mut t = Table::new(["NAME", "TOKEN", "EXPIRES AT"]);
            for (_, tok) in &tokens {
                let expires = if tok.expires_at.starts_with("0001-") {
                    String::new()
                } else {
                    tok.expires_at.clone()
                };
                t.row(vec![tok.client_name.clone(), tok.encode(), expires]);
            }
            let plain: Vec<&CertificateAddToken> = tokens.iter().map(|(_, t)| t).collect();
            print_list(format, &t, &plain)?;
        }
        TrustCmd::RevokeToken { name } => {
            let name = crate::remotes::local_name(&name)?.to_string();
            let tokens = pending_tokens(c)?;
            let Some((op, _)) = tokens.iter().find(|(_, t)| t.client_name == name) else {
                bail!("no pending trust token for {name:?} (see `corral config trust list-tokens`)");
            };
            c.delete(&format!("/1.0/operations/{}", encode_segment(&op.id)))?;
        }
        TrustCmd::Show { fingerprint } => {
            let fingerprint = crate::remotes::local_name(&fingerprint)?;
            let cert: Certificate = c.get(&format!("/1.0/certificates/{}", encode_segment(fingerprint)))?;
            out!("{}", yaml(&cert)?);
        }
        TrustCmd::Remove { fingerprint } => {
            let fingerprint = crate::remotes::local_name(&fingerprint)?;
            c.delete(&format!("/1.0/certificates/{}", encode_segment(fingerprint)))?;
        }
    }
    Ok(())
}
