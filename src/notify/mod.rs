//! Notifications: what leaves Herald. Payload formats per receiver type, signing, and the
//! content filter that scrubs secrets and personal data from every outgoing message.
//!
//! This module owns the *shape* of outgoing messages. It must not decide *whether* to notify
//! (that is the engine's job) and the format functions here do no I/O.
