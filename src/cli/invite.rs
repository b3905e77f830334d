//! `mesh invite` and `mesh join`: tickets made, listed and revoked through this node's API,
//! and a ticket handed to the local agent to join its mesh.
//!
//! The ticket goes alone to standard output (so `T=$(mesh invite)` works); what it is for
//! goes to standard error.

use std::io::Read as _;

use super::args::{InviteArgs, JoinArgs};
use super::render::to_json_pretty;
use crate::api::client::ClientError;
use crate::api::{InviteCreateRequest, InviteEntry, JoinApiRequest};

/// Parses a lifetime: `90s`, `30m`, `1h`, `2d`, or plain seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("--ttl {text:?}: expected e.g. 90s, 30m, 1h or 2d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("--ttl {text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .ok_or_else(|| format!("--ttl {text:?} is too long"))
}

/// `1h 5m`-style rendering of a number of seconds.
fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn invite_rows(rows: &[InviteEntry]) -> String {
    let now = crate::invite::unix_now();
    let mut out = format!(
        "{:<10} {:<8} {:<7} {:<10} {}\n",
        "ID", "STATUS", "USED", "EXPIRES", "NAME"
    );
    for r in rows {
        let expires = if r.expires > now {
            format!("in {}", human_secs(r.expires - now))
        } else {
            format!("{} ago", human_secs(now - r.expires))
        };
        out.push_str(&format!(
            "{:<10} {:<8} {:<7} {:<10} {}\n",
            r.id,
            r.status,
            format!("{}/{}", r.used, r.uses),
            expires,
            r.name.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub fn invite(args: InviteArgs) -> Result<(), ClientError> {
    let client = args.client.connect();
    if args.list {
        let rows = client.invites()?;
        if args.json {
            out!("{}\n", to_json_pretty(&rows));
        } else {
            out!("{}", invite_rows(&rows));
        }
        return Ok(());
    }
    if let Some(id) = &args.revoke {
        let row = client.revoke_invite(id)?;
        if args.json {
            out!("{}\n", to_json_pretty(&row));
        } else {
            out!("revoked invite {}\n", row.id);
        }
        return Ok(());
    }
    let ttl_secs = parse_ttl(&args.ttl).map_err(ClientError::Usage)?;
    let created = client.create_invite(&InviteCreateRequest {
        ttl_secs,
        uses: args.uses,
        name: args.name.clone(),
    })?;
    if args.json {
        out!("{}\n", to_json_pretty(&created));
        return Ok(());
    }
    out!("{}\n", created.ticket);
    if args.qr {
        match render_qr(&created.ticket) {
            Some(qr) => note!("{qr}"),
            None => note!("mesh: the ticket is too long for a QR code"),
        }
    }
    let devices = match created.invite.uses {
        1 => "one device".to_string(),
        n => format!("{n} devices"),
    };
    note!(
        "Invite {} joins {devices} to mesh {} within {} (via {}). On the device, with its \
         agent running: mesh join <ticket>; or at first boot: mesh agent --join <ticket>, or \
         the ticket in the file of --join-file.",
        created.invite.id,
        created.mesh_id,
        human_secs(ttl_secs),
        created.addrs.join(", ")
    );
    Ok(())
}

/// The ticket as a QR code drawn with Unicode half blocks, two modules per character line.
/// The encoder picks alphanumeric mode for a ticket (upper case and digits only): ~190
/// characters fit a version 8 code (49 modules). Light modules are drawn (inverted), so the
/// code reads on the usual dark terminal background.
pub fn render_qr(ticket: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(ticket, qrcode::EcLevel::L).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

pub fn join(args: JoinArgs) -> Result<(), ClientError> {
    let ticket = if args.ticket == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(crate::invite::ticket::MAX_TICKET_CHARS as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| ClientError::Usage(format!("reading the ticket: {e}")))?;
        text
    } else {
        args.ticket.clone()
    };
    // Checked here too, so a mistyped ticket is reported without bothering the agent.
    crate::invite::Ticket::decode(&ticket).map_err(|e| ClientError::Usage(e.to_string()))?;
    let joined = args.client.connect().join(&JoinApiRequest { ticket })?;
    if args.json {
        out!("{}\n", to_json_pretty(&joined));
    } else {
        out!(
            "joined mesh {} (invite {} of {}); key stored in {}; the agent restarts with it\n",
            joined.mesh_id,
            joined.invite,
            joined.inviter,
            joined.key_file
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_in_every_unit() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert_eq!(human_secs(3600), "1h00m");
        assert_eq!(human_secs(86400), "1d");
    }

    #[test]
    fn a_ticket_fits_a_small_qr_code() {
        let ticket = format!("MESH1{}", "A".repeat(200));
        let qr = render_qr(&ticket).expect("fits");
        // Alphanumeric mode: 205 characters fit version 8 (49 modules + 2 × 4 quiet zone),
        // drawn two module rows per line.
        let width = qr.lines().next().expect("a line").chars().count();
        assert!(width <= 57, "{width} columns");
        assert!(qr.lines().count() <= 29, "{} lines", qr.lines().count());
    }
}
