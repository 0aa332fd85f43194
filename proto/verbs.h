/* The verbs of PROTOCOL §3, listed once. Each user expands PROTO_VERBS
 * with its own X to take the columns it needs, so the wire name, the enum,
 * the parameter whose absence is "missing <param>", whether one binary
 * frame follows the request, and the SFTP handler cannot drift apart
 * (proto.c builds its method table from it, sftp_ops.c its handler table).
 *
 * X(wire name, enum, required param or NULL, takes binary, handler)
 *
 * The handler column names a static function of sftp_ops.c; proto ignores
 * it. Rename checks its two parameters ("from", "to") itself. */
#ifndef WC_PROTO_VERBS_H
#define WC_PROTO_VERBS_H

#define PROTO_VERBS(X)                                                  \
    X("auth",        M_AUTH,        NULL,     0, op_auth)              \
    X("stat",        M_STAT,        "path",   0, op_stat)              \
    X("list",        M_LIST,        "path",   0, op_list)              \
    X("fs_info",     M_FS_INFO,     NULL,     0, op_fs_info)           \
    X("mkdir",       M_MKDIR,       "path",   0, op_mkdir)             \
    X("delete",      M_DELETE,      "path",   0, op_delete)            \
    X("rename",      M_RENAME,      NULL,     0, op_rename)            \
    X("read",        M_READ,        "path",   0, op_read)              \
    X("write",       M_WRITE,       "path",   1, op_write)             \
    X("write_open",  M_WRITE_OPEN,  "path",   0, op_write_open)        \
    X("write_chunk", M_WRITE_CHUNK, "handle", 1, op_write_chunk)       \
    X("write_close", M_WRITE_CLOSE, "handle", 0, op_write_close)       \
    X("write_abort", M_WRITE_ABORT, "handle", 0, op_write_abort)       \
    X("read_open",   M_READ_OPEN,   "path",   0, op_read_open)         \
    X("read_chunk",  M_READ_CHUNK,  "handle", 0, op_read_chunk)        \
    X("read_close",  M_READ_CLOSE,  "handle", 0, op_read_close)

#endif
