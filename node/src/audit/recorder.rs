//! The one fail-closed audit recorder: every service records each request it answers through it.
//!
//! A request fills in an [`Access`] as it is handled (who, which customer and order by keyed hash,
//! purpose, which buyer fields it disclosed) and hands it to [`Recorder::record`] with its result.
//! The record is durable before the result is returned; if it cannot be written, the access is
//! refused (fail closed), whatever the result was. A request that another node handled as owner is
//! recorded there, not here. See ARCHITECTURE.md, "The audit chain".

use crate::access::policy::Field;
use crate::audit::log::{AuditLog, Entry};
use crate::error::{Error, code_name};
use crate::security::identity::Identity;
use mesh_proto::v1::OrderView;

/// What one request touched, filled in as it is handled, for its audit record.
#[derive(Debug, Default)]
pub struct Access {
    pub principal: String,
    pub role: String,
    /// Keyed hash of the customer touched.
    pub customer: String,
    /// Keyed hash of the order touched.
    pub order: String,
    /// The caller's stated purpose (a reveal's reason code; an admin action's summary).
    pub purpose: String,
    /// A note sealed under the customer's key (a reveal's reason text).
    pub note: String,
    /// Buyer fields disclosed unmasked.
    pub fields: Vec<String>,
    /// Handled by another node (the owner), which keeps the record.
    pub forwarded: bool,
}

impl Access {
    /// Notes the caller.
    pub fn caller(&mut self, identity: &Identity) {
        self.principal = identity.to_string();
        self.role = identity
            .role()
            .map_or_else(|| "node".to_owned(), |r| r.to_string());
    }

    /// Records the buyer fields a projection disclosed unmasked (those neither masked nor
    /// withheld in its view).
    pub fn disclosed(&mut self, view: Option<&OrderView>) {
        let Some(view) = view else { return };
        for f in Field::ALL.into_iter().filter(|f| f.is_buyer_field()) {
            let path = f.path();
            let hidden = view.masked_fields.iter().any(|p| p == path)
                || view.withheld_fields.iter().any(|p| p == path);
            if !hidden && !self.fields.iter().any(|p| p == path) {
                self.fields.push(path.to_owned());
            }
        }
    }
}

/// Records accesses in the node's audit log, fail closed.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    log: AuditLog,
}

impl Recorder {
    pub fn new(log: AuditLog) -> Recorder {
        Recorder { log }
    }

    /// The log underneath (for queries and the live tail).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Records `action` with what it touched and how it ended, durably, then returns `result`; or,
    /// if the record cannot be written, refuses the access.
    pub async fn record<T>(
        &self,
        action: &str,
        access: Access,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if access.forwarded {
            return result;
        }
        let entry = Entry {
            principal: if access.principal.is_empty() {
                "-".into()
            } else {
                access.principal
            },
            role: access.role,
            action: action.to_owned(),
            customer: access.customer,
            order: access.order,
            purpose: access.purpose,
            fields: if result.is_ok() {
                access.fields
            } else {
                Vec::new()
            },
            allowed: result.is_ok(),
            reason: match &result {
                Ok(_) => String::new(),
                Err(e) => code_name(e.code()).to_owned(),
            },
            note: access.note,
        };
        match self.log.append(entry).await {
            Ok(_) => result,
            Err(e) => {
                tracing::error!(error = %e, action, "audit record not written; access refused");
                Err(Error::Unavailable(
                    "the audit trail is unavailable, so the access was refused; retry later".into(),
                ))
            }
        }
    }
}
