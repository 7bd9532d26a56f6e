//! Reading the stack's Prometheus text: every process's, or none.

/// The `/metrics` text of every URL; `None` when there are none or one
/// cannot be read (a sum without all of them would mislead).
pub async fn every(urls: &[String]) -> Option<Vec<String>> {
    if urls.is_empty() {
        return None;
    }
    let mut texts = Vec::with_capacity(urls.len());
    for url in urls {
        let (status, text) = stack::http_get(url).await.ok()?;
        if status != 200 {
            return None;
        }
        texts.push(text);
    }
    Some(texts)
}
