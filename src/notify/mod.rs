//! Notifications: what leaves Herald. Payload formats per receiver type, signing, message text
//! templates, and the content filter that scrubs secrets and personal data from every outgoing
//! message.
//!
//! This module owns the *shape* of outgoing messages:
//! * [`message`] — the receiver-independent [`Notification`] (spec §6) and the generic webhook
//!   body;
//! * [`signing`] — Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`) and their verification;
//! * [`template`] — default and per-rule title/body text (minijinja, strict undefined);
//! * [`format`] — PagerDuty Events v2, Slack, Teams (Adaptive Card) and Alertmanager v2 bodies;
//! * [`scrub`] — the content filter.
//!
//! It must not decide *whether* to notify (that is the engine's job) and nothing here does I/O:
//! no network, no files, no clock (callers pass `now` where a format needs it), no metrics.
//! Delivery, retries and the outbox belong to the dispatcher: [`plan`] (decisions → outbox
//! entries, noise control), [`receiver`] (entries → requests, answers → outcomes),
//! [`transport`] (HTTP, log, dry-run recorder) and [`worker`] (the delivery loop).
//!
//! Expected pipeline per notification: `Scrubber::scrub_notification` → `Templates::render` →
//! `Scrubber::scrub_rendered` → a format function (or `generic_webhook_body` + `signing`).

pub mod format;
pub mod message;
pub mod plan;
pub mod receiver;
pub mod scrub;
pub mod signing;
pub mod template;
pub mod transport;
pub mod worker;

pub use format::{alertmanager_alerts, pagerduty_event, slack_message, teams_message};
pub use message::{generic_webhook_body, IncidentRef, Notification, Status};
pub use scrub::{Kind as RedactionKind, ScrubConfig, ScrubError, Scrubber};
pub use signing::{
    sign, signature_headers, verify, SecretError, SignatureHeaders, VerifyError, WebhookSecret,
};
pub use template::{RenderedText, TemplateError, Templates};
