//! `sspctl alert`: capacity alerts (SSP's `alert -set|-list|-unset`), see [`crate::alerts`].

use super::output;
use super::{admin, output_opts, Cli};
use crate::admin::{AdminReply, AdminRequest};
use crate::alerts::{Alert, AlertInfo, AlertType};
use anyhow::{bail, Result};
use clap::Subcommand;
use std::io::Write;

pub const ALERT_EXAMPLES: &str = "Examples:
  sspctl alert set --type threshold --value 80
  sspctl alert set --type threshold --value 90 --exec 'logger -t ssp \"$SSP_POOL is $SSP_ALERT_CURRENT% full\"'
  sspctl alert set --type overcommit --value 300 --enforce
  sspctl alert list
  sspctl alert unset --type overcommit";

#[derive(Subcommand, Debug)]
pub enum AlertCmd {
    /// Set (or replace) the alert of a type: sspd warns once each time the figure crosses
    /// VALUE percent of the pool's capacity, sets ssp_alert_active{type}, and runs --exec
    #[command(after_help = ALERT_EXAMPLES)]
    Set {
        /// threshold: space used, in percent of capacity; overcommit: space provisioned (LU,
        /// clone and image sizes), in percent of capacity
        #[arg(long = "type", value_name = "threshold|overcommit")]
        kind: AlertType,
        /// Percent of the pool's capacity (threshold 1-100, overcommit 1-100000)
        #[arg(long)]
        value: u32,
        /// Command run by sh -c at each crossing into the active state, with SSP_ALERT_TYPE,
        /// SSP_ALERT_VALUE, SSP_ALERT_CURRENT, SSP_POOL, SSP_POOL_DIR, SSP_POOL_ID and
        /// SSP_POOL_{TOTAL,USED,PROVISIONED}_BYTES in its environment
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Overcommit only: a hard limit; new LUs, clones and grows past VALUE are refused
        #[arg(long)]
        enforce: bool,
    },
    /// List the alerts: type, value, current figure, whether active, hook
    #[command(visible_alias = "ls")]
    List,
    /// Remove the alert of a type
    #[command(visible_alias = "rm")]
    Unset {
        /// threshold or overcommit
        #[arg(long = "type", value_name = "threshold|overcommit")]
        kind: AlertType,
    },
}

/// `alert list` columns (the JSON field names).
pub const ALERT_FIELDS: &[output::Field] = &[
    output::Field::new("type", "TYPE", true),
    output::Field::new("value", "VALUE(%)", true),
    output::Field::new("current", "CURRENT(%)", true),
    output::Field::new("active", "ACTIVE", true),
    output::Field::new("enforce", "ENFORCE", true),
    output::Field::new("exec", "EXEC", true),
];

pub fn alert(cli: &Cli, cmd: &AlertCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        AlertCmd::Set {
            kind,
            value,
            exec,
            enforce,
        } => AdminRequest::AlertSet {
            alert: Alert {
                kind: *kind,
                value: *value,
                exec: exec.clone(),
                enforce: *enforce,
            },
        },
        AlertCmd::List => AdminRequest::AlertList,
        AlertCmd::Unset { kind } => AdminRequest::AlertUnset { kind: *kind },
    };
    let AdminReply::Alerts { pool, alerts } = admin(cli, req)? else {
        bail!("unexpected reply to alert");
    };
    let opts = output_opts(cli);
    if !opts.json && !opts.scripted() {
        writeln!(out, "POOL_NAME: {pool}")?;
    }
    output::listing_of("alert list", ALERT_FIELDS, &alerts).print(&opts, out)?;
    Ok(())
}

/// The active alerts, for `pool status` (none when they cannot be read).
pub fn active(cli: &Cli) -> Vec<AlertInfo> {
    match admin(cli, AdminRequest::AlertList) {
        Ok(AdminReply::Alerts { alerts, .. }) => alerts.into_iter().filter(|a| a.active).collect(),
        _ => Vec::new(),
    }
}
