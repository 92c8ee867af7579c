# Varnish as the cache ringway's hits are compared with (`compare --cases hit` fills in {{…}}).
# Fairness: Varnish's defaults for what it stores and how it answers (the origin's
# Cache-Control: max-age=3600 on /cached/), malloc storage of the same size as ringway's cache
# (256 MiB), one thread pool (run on the proxies' CPU), no logging beyond its shared-memory log
# (which Varnish always writes; no varnishncsa is started). Paths outside /cached/ pass.
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "{{ORIGIN_PORT}}";
}

sub vcl_recv {
    if (req.url !~ "^/cached/") {
        return (pass);
    }
}
