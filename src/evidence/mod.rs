//! Evidence: what shows an auditor that the decision is enforced, without logging employees.
//! The policy's identity (a hash replicas agree on), the audit trail of every policy put in
//! force or refused (a hash chain), and the compliance report (per day, segment and list; the
//! optional top clients only under pseudonyms keyed anew each day). Knows the config and the
//! metrics, never the policy or the gateway: they hand in the facts to record.

pub mod audit;
pub mod days;
pub mod identity;
pub mod pseudonym;
pub mod report;
