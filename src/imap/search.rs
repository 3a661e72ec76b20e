//! PLACEHOLDER (replaced by the real module)
use super::command::SearchKey;
use crate::store::{Flags, StoreError};
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: Flags,
    pub keywords: u64,
    pub keyword_names: &'a [String],
    pub internal_date: i64,
    pub size: u64,
}
pub struct Bounds {
    pub max_seq: u32,
    pub max_uid: u32,
}
pub trait Content {
    fn header(&mut self) -> Result<&[u8], StoreError>;
    fn message(&mut self) -> Result<&[u8], StoreError>;
}
pub enum Need {
    Nothing,
    Header,
    Message,
}
pub fn need(key: &SearchKey) -> Need {
    let _ = key;
    Need::Nothing
}
pub fn matches(key: &SearchKey, c: &Candidate, bounds: &Bounds, content: &mut dyn Content) -> Result<bool, StoreError> {
    let _ = (key, c, bounds, content);
    Ok(true)
}
pub fn charset_supported(name: &str) -> bool {
    name.eq_ignore_ascii_case("utf-8") || name.eq_ignore_ascii_case("us-ascii")
}
