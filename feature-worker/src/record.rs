//! The view of one consumed record that stages, replays and outputs read: topic, partition,
//! offset, key, payload and headers, from a consumer's borrowed message or an owned one.

use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, OwnedHeaders, OwnedMessage};

/// One record as a stage sees it.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// Empty when the record has none.
    pub payload: &'a [u8],
    pub headers: Option<&'a BorrowedHeaders>,
}

impl<'a> Record<'a> {
    pub fn from_message(m: &'a BorrowedMessage<'_>) -> Self {
        Self::from_parts(m, m.headers())
    }

    pub fn from_owned(m: &'a OwnedMessage) -> Self {
        Self::from_parts(m, m.headers().map(OwnedHeaders::as_borrowed))
    }

    fn from_parts(m: &'a impl Message, headers: Option<&'a BorrowedHeaders>) -> Self {
        Self {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            headers,
        }
    }
}
