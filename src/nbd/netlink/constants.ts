// Numbers of the kernel's netlink ABI that the NBD netlink layer uses.
// Checked against the uapi headers linux/netlink.h, linux/genetlink.h,
// linux/nbd-netlink.h and linux/nbd.h (Linux 6.1 and torvalds/linux master
// agree on every value below).

// ---- linux/netlink.h ----------------------------------------------------

export const NETLINK_GENERIC = 16;

export const NLMSG_HDRLEN = 16;
export const NLMSG_ALIGNTO = 4;
export const NLA_HDRLEN = 4;
export const NLA_ALIGNTO = 4;

// Control message types (< NLMSG_MIN_TYPE).
export const NLMSG_NOOP = 0x1;
export const NLMSG_ERROR = 0x2;
export const NLMSG_DONE = 0x3;
export const NLMSG_OVERRUN = 0x4;
export const NLMSG_MIN_TYPE = 0x10;

// nlmsg_flags.
export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_ECHO = 0x08;
// Flags of an NLMSG_ERROR message (the same bits mean other things elsewhere).
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

// Extended-ack TLVs after struct nlmsgerr (enum nlmsgerr_attrs).
export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_COOKIE = 3;
export const NLMSGERR_ATTR_POLICY = 4;
export const NLMSGERR_ATTR_MISS_TYPE = 5;
export const NLMSGERR_ATTR_MISS_NEST = 6;

// setsockopt(SOL_NETLINK, ...) options. SOL_NETLINK is 270 in linux/socket.h.
export const SOL_NETLINK = 270;
export const NETLINK_ADD_MEMBERSHIP = 1;
export const NETLINK_DROP_MEMBERSHIP = 2;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;

// nla_type bits above the type number.
export const NLA_F_NESTED = 1 << 15;
export const NLA_F_NET_BYTEORDER = 1 << 14;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

// ---- linux/genetlink.h --------------------------------------------------

export const GENL_HDRLEN = 4;
export const GENL_NAMSIZ = 16;
/** The controller ("nlctrl") has a fixed family id: NLMSG_MIN_TYPE. */
export const GENL_ID_CTRL = NLMSG_MIN_TYPE;
export const GENL_CTRL_NAME = 'nlctrl';
/** genlmsghdr.version we send to the controller (libnl sends 1; the kernel does not check). */
export const GENL_CTRL_VERSION = 1;

export const CTRL_CMD_NEWFAMILY = 1;
export const CTRL_CMD_GETFAMILY = 3;

export const CTRL_ATTR_FAMILY_ID = 1; // u16
export const CTRL_ATTR_FAMILY_NAME = 2; // NUL-terminated string
export const CTRL_ATTR_VERSION = 3; // u32
export const CTRL_ATTR_HDRSIZE = 4; // u32
export const CTRL_ATTR_MAXATTR = 5; // u32
export const CTRL_ATTR_OPS = 6; // nested
export const CTRL_ATTR_MCAST_GROUPS = 7; // nested list, item types 1..n

export const CTRL_ATTR_MCAST_GRP_NAME = 1; // string
export const CTRL_ATTR_MCAST_GRP_ID = 2; // u32

// ---- linux/nbd-netlink.h ------------------------------------------------

export const NBD_GENL_FAMILY_NAME = 'nbd';
export const NBD_GENL_VERSION = 1;
export const NBD_GENL_MCAST_GROUP_NAME = 'nbd_mc_group';

export const NBD_CMD_CONNECT = 1;
export const NBD_CMD_DISCONNECT = 2;
export const NBD_CMD_RECONFIGURE = 3;
export const NBD_CMD_LINK_DEAD = 4;
export const NBD_CMD_STATUS = 5;

export const NBD_CMD_NAMES: Record<number, string> = {
  1: 'NBD_CMD_CONNECT', 2: 'NBD_CMD_DISCONNECT', 3: 'NBD_CMD_RECONFIGURE', 4: 'NBD_CMD_LINK_DEAD',
  5: 'NBD_CMD_STATUS',
};

// Attribute types and the payload the kernel's nbd_attr_policy expects.
export const NBD_ATTR_INDEX = 1; // u32
export const NBD_ATTR_SIZE_BYTES = 2; // u64
export const NBD_ATTR_BLOCK_SIZE_BYTES = 3; // u64
export const NBD_ATTR_TIMEOUT = 4; // u64, seconds
export const NBD_ATTR_SERVER_FLAGS = 5; // u64, NBD_FLAG_* transmission flags
export const NBD_ATTR_CLIENT_FLAGS = 6; // u64, NBD_CFLAG_*
export const NBD_ATTR_SOCKETS = 7; // nested: NBD_SOCK_ITEM { NBD_SOCK_FD }
export const NBD_ATTR_DEAD_CONN_TIMEOUT = 8; // u64, seconds
export const NBD_ATTR_DEVICE_LIST = 9; // nested: NBD_DEVICE_ITEM { INDEX, CONNECTED }
export const NBD_ATTR_BACKEND_IDENTIFIER = 10; // string (since Linux 5.14)

export const NBD_SOCK_ITEM = 1;
export const NBD_SOCK_FD = 1; // u32

export const NBD_DEVICE_ITEM = 1;
export const NBD_DEVICE_INDEX = 1; // u32
export const NBD_DEVICE_CONNECTED = 2; // u8

// ---- linux/nbd.h (client flags) -----------------------------------------

/** Delete the device when it is disconnected. */
export const NBD_CFLAG_DESTROY_ON_DISCONNECT = 1 << 0;
/** Disconnect when the last opener closes the device. */
export const NBD_CFLAG_DISCONNECT_ON_CLOSE = 1 << 1;
