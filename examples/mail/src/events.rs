//! The two events of the example's cascade.

use converge::event::Event;
use serde::{Deserialize, Serialize};

/// A welcome mail must be sent. Written by the signup in the same transaction as the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMail {
    /// The user's id.
    pub user_id: i64,
    /// Where to send it.
    pub email: String,
}

impl Event for SendMail {
    const TYPE: &'static str = "com.example.mail.send";
}

/// The provider accepted the welcome mail. Emitted by the handler of [`SendMail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailSent {
    /// The user's id.
    pub user_id: i64,
    /// The provider's id of the mail.
    pub provider_mail_id: String,
}

impl Event for MailSent {
    const TYPE: &'static str = "com.example.mail.sent";
}
