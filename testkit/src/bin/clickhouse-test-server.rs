//! Starts one ClickHouse server on free ports for a whole test run, prints `tcp_port=P` and `url=http://...`,
//! and keeps it running until this process is killed (the server's watchdog then stops it).
//! `scripts/test` exports them as `RISKSTREAM_TEST_CLICKHOUSE_URL` and `..._TCP_PORT`.

fn main() {
    let server = riskstream_testkit::clickhouse::ClickHouseServer::start_private();
    println!("tcp_port={}", server.tcp_port());
    println!("url={}", server.url());
    loop {
        std::thread::park();
    }
}
