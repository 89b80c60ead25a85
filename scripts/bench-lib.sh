# Shared by the load scripts (sourced): nginx as a plain reverse proxy, the bar for a proxy.
# write_nginx_conf DIR UPSTREAM LISTEN: 2 workers, upstream keep-alive, no access log; writes
# DIR/nginx.conf (start it with: nginx -p DIR -c DIR/nginx.conf -g 'daemon off;').
write_nginx_conf() {
  local dir=$1 upstream=$2 listen=$3
  mkdir -p "$dir/nginx-tmp"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/nginx-tmp;
  proxy_temp_path $dir/nginx-tmp;
  upstream mock { server $upstream; keepalive 64; }
  server {
    listen $listen;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}
