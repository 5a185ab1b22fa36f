// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ERC-7160: ERC-721 Multi-Metadata Extension (status Final)
/// @notice A token has several metadata URIs; its owner may pin one of them as the one {tokenURI} returns.
/// @dev ERC-165 interface id: 0x06e1bc5b, the XOR of the four function selectors below.
/// See https://eips.ethereum.org/EIPS/eip-7160.
interface IERC7160 {
    /// @notice `index` (a position in the array {tokenURIs} returns) was pinned for `tokenId`.
    event TokenUriPinned(uint256 indexed tokenId, uint256 indexed index);

    /// @notice `tokenId` no longer has a pinned URI.
    event TokenUriUnpinned(uint256 indexed tokenId);

    /// @notice Every URI of `tokenId`, the index of the one {tokenURI} returns, and whether that index is pinned.
    /// @dev Reverts when the token does not exist.
    function tokenURIs(uint256 tokenId) external view returns (uint256 index, string[] memory uris, bool pinned);

    /// @notice Makes {tokenURI} of `tokenId` return `uris[index]` until unpinned. Emits {TokenUriPinned}.
    /// @dev Reverts when the token does not exist.
    function pinTokenURI(uint256 tokenId, uint256 index) external;

    /// @notice Drops the pin of `tokenId`, so {tokenURI} returns the default URI again. Emits {TokenUriUnpinned}.
    /// @dev Reverts when the token does not exist.
    function unpinTokenURI(uint256 tokenId) external;

    /// @notice Whether `tokenId` has a pinned URI.
    /// @dev Reverts when the token does not exist.
    function hasPinnedTokenURI(uint256 tokenId) external view returns (bool pinned);
}
