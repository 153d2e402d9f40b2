#!/bin/sh
# Writes a man page (roff) for a command from its --help text.
# Usage: manpage.sh NAME SECTION "one-line summary" DATE < help-text > NAME.SECTION
set -eu
name=$1 section=$2 summary=$3 date=$4
up=$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')
printf '.TH %s %s "%s" "vmpersona" "vmpersona"\n' "$up" "$section" "$date"
printf '.SH NAME\n%s \\- %s\n' "$(printf '%s' "$name" | sed 's/-/\\-/g')" "$summary"
printf '.SH DESCRIPTION\nThe text below is the output of\n.BR "%s \\-\\-help" .\n.PP\n.nf\n' "$name"
# Escape backslashes, protect lines that start with a dot or a quote, and
# keep the help text's layout.
sed -e 's/\\/\\e/g' -e 's/^\([.'"'"']\)/\\\&\1/' -e 's/-/\\-/g'
printf '.fi\n'
printf '.SH SEE ALSO\n'
case $name in
  vmpersona-hostd) printf '.BR vmpersonactl (1),\n.BR vmpersona-guestd (8),\n.BR systemd.socket (5)\n' ;;
  vmpersonactl) printf '.BR vmpersona-hostd (8)\n' ;;
  *) printf '.BR vmpersona-hostd (8)\n' ;;
esac
printf 'and /usr/share/doc/vmpersona-hostd/ on the host.\n'
