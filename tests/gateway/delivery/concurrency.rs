//! How many of a batch's requests one dispatcher has in flight at once
//! (`delivery.concurrent_requests`). A batch's single-user calls (trackPurchase, updateCart,
//! ...) are as many as the events that need them, and they go out that many at a time: with a
//! partner that takes a while to answer, the waves they go out in are what a dispatcher's
//! throughput is made of.

use super::{Harness, EVENTS};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the slow Iterable saw of its trackPurchase requests.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
    seen: AtomicUsize,
}

const PURCHASE: &str = "/api/commerce/trackPurchase";

/// Every request answered with success after 500 ms; trackPurchase requests counted while
/// they wait (the count drops before the answer leaves, so the next request of a full wave
/// can only arrive after it).
async fn answer(req: HttpRequest, seen: web::Data<Arc<InFlight>>) -> HttpResponse {
    let purchase = req.path() == PURCHASE;
    if purchase {
        let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
        seen.most.fetch_max(now, Ordering::SeqCst);
        seen.seen.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if purchase {
        seen.now.fetch_sub(1, Ordering::SeqCst);
    }
    HttpResponse::Ok()
        .json(json!({"msg": "", "code": "Success", "successCount": 1, "failCount": 0}))
}

/// A slow Iterable on a free port: its URL and what it sees.
fn slow_iterable() -> (String, Arc<InFlight>) {
    let seen = Arc::new(InFlight::default());
    let data = web::Data::new(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(answer))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, seen)
}

/// An Order Completed of user `i`: one trackPurchase each.
fn order(i: usize) -> Value {
    json!({
        "type": "track", "event": "Order Completed", "messageId": format!("m-order-{i}"),
        "userId": format!("u-{i}"), "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"order_id": format!("o-{i}"), "total": 25,
                       "products": [{"product_id": "p1", "sku": "S1", "name": "Mug", "price": 12.5, "quantity": 2}]},
        "context": {"traits": {"email": format!("u{i}@example.com")}}
    })
}

/// Delivers 24 orders (one batch) with `concurrent` requests at once; the most trackPurchase
/// requests the slow Iterable had in flight together, and how many it saw.
async fn deliver_orders(concurrent: usize) -> (usize, usize) {
    let (url, seen) = slow_iterable();
    let h = Harness::with(|s| {
        s.delivery.concurrent_requests = concurrent;
        // The orders' trackEvent items go out in a bulk request: no window between the two
        // kinds of call for a user, so that every purchase goes in the batch's own rounds.
        s.delivery.user_call_window_ms = 0;
        s.iterable.us_url = url.clone();
        s.iterable.eu_url = url;
    })
    .await;
    let orders: Vec<Value> = (0..24).map(order).collect();
    h.insert(&orders).await;
    h.drain().await;
    let delivered: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {EVENTS} WHERE state = 'delivered'"
    ))
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(delivered, 24, "every order is delivered");
    (
        seen.most.load(Ordering::SeqCst),
        seen.seen.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn a_batchs_single_user_calls_are_in_flight_together_up_to_concurrent_requests() {
    // With room for them all, the 24 purchases of the batch wait for their answers together.
    let (most, seen) = deliver_orders(64).await;
    assert_eq!(seen, 24);
    assert_eq!(
        most, 24,
        "all of the batch's trackPurchase requests were out at once"
    );

    // With room for 5, never more than 5 are out, and 5 are.
    let (most, seen) = deliver_orders(5).await;
    assert_eq!(seen, 24);
    assert_eq!(most, 5, "at most delivery.concurrent_requests at once");
}
