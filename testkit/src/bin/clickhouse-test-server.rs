//! Starts one ClickHouse server on free ports for a whole test run, prints `url=http://...`,
//! and keeps it running until this process is killed (the server's watchdog then stops it).
//! `scripts/test` exports the URL as `RISKSTREAM_TEST_CLICKHOUSE_URL`.

fn main() {
    let server = riskstream_testkit::clickhouse::ClickHouseServer::start_private();
    println!("url={}", server.url());
    loop {
        std::thread::park();
    }
}
