# Builds gRPC request bodies by hand for h2load, which sends one fixed body:
# sourced by the bench scripts, with WORK set to a scratch folder.
#
#   printf '%s' "$NAME" | field 1 | frame >"$WORK/get.frame"   # a Get*Request{name = 1}
#
# One gRPC frame: flag 0 (not compressed), a big-endian u32 length, then the
# protobuf message, whose length-delimited fields are a tag byte, a varint
# length and the bytes.

byte() { printf "\\$(printf '%03o' "$1")"; }

varint() {
    local n=$1
    while ((n >= 128)); do
        byte $(((n & 127) | 128))
        n=$((n >> 7))
    done
    byte "$n"
}

field() { # number, then the field's bytes on stdin: a length-delimited field
    local body
    body=$(mktemp -p "$WORK")
    cat >"$body"
    byte $((($1 << 3) | 2))
    varint "$(stat -c %s "$body")"
    cat "$body"
}

frame() { # the message on stdin, as one uncompressed gRPC frame
    local body len
    body=$(mktemp -p "$WORK")
    cat >"$body"
    len=$(stat -c %s "$body")
    byte 0
    byte $(((len >> 24) & 255))
    byte $(((len >> 16) & 255))
    byte $(((len >> 8) & 255))
    byte $((len & 255))
    cat "$body"
}
