// Command peerclient calls the host daemon's API over its unix socket as
// whatever user runs it (the auth suite runs it as nobody). It reads lines
// "METHOD PATH [TOKEN]" from stdin and prints one line "STATUS" (or "ERR
// message") per request.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	sock := os.Args[1]
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		var body io.Reader
		if f[0] == "POST" || f[0] == "PUT" {
			body = strings.NewReader(`{"name":"authp","command":"true"}`)
		}
		req, _ := http.NewRequest(f[0], "http://hostd"+f[1], body)
		if len(f) > 2 {
			req.Header.Set("Authorization", "Bearer "+f[2])
		}
		res, err := c.Do(req)
		if err != nil {
			fmt.Println("ERR", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		fmt.Println(res.StatusCode)
	}
}
