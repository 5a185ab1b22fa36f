// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC165} from "@openzeppelin/contracts/interfaces/IERC165.sol";
import {IERC4906} from "@openzeppelin/contracts/interfaces/IERC4906.sol";
import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IERC7160} from "./IERC7160.sol";
import {ProvenanceRegistry} from "./ProvenanceRegistry.sol";

/// @title Satscale collection
/// @notice An ERC-721 collection whose tokens can be pointed at upscaled images. Every upgrade links the token to
/// the provenance record of the paid Satscale job that produced the image, so anyone can follow a token to its
/// input, output, model and payment.
/// @dev Multi-metadata (ERC-7160): a token keeps every URI it ever had as numbered revisions. Revision 0 is the URI
/// it was minted with, so the original image stays on chain; each {upgrade} appends one revision and nothing ever
/// removes or rewrites one. {tokenURI} returns the revision the token's owner pinned, or the latest revision when
/// none is pinned (ERC-7160 leaves this "default URI" to the implementer; the latest is the upscaled image the
/// collection upgraded the token to). Only the token's owner pins and unpins: no role, the admin included, can
/// override the owner's choice, and an upgrade of a pinned token appends a revision without moving the pin.
/// Metadata changes are announced with ERC-4906 events. The contract cannot check that a URI's metadata really
/// points at the record's output CID (the metadata lives off chain); it checks that the record exists, and the
/// link it stores lets a verifier do the rest.
contract SatscaleCollection is IERC4906, IERC7160, ERC721, AccessControl {
    /// @notice Accounts allowed to mint new tokens.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    /// @notice Accounts allowed to append revisions through {upgrade} and {upgradeBatch}.
    bytes32 public constant UPGRADER_ROLE = keccak256("UPGRADER_ROLE");

    // ERC-4906 defines only events, so its id is a fixed value rather than an XOR of selectors.
    bytes4 private constant ERC4906_INTERFACE_ID = 0x49064906;

    /// @notice The registry whose records upgrades link to.
    ProvenanceRegistry public immutable provenanceRegistry;

    /// @dev One metadata URI of a token and the payment hash of the job that produced it (zero for revision 0).
    struct Revision {
        string uri;
        bytes32 paymentHash;
    }

    /// @dev Per-token bookkeeping, one storage slot. `upgrades` is the number of upgrades, which is also the index
    /// of the latest revision; it stays zero at mint, so minting writes no extra slot.
    struct TokenState {
        uint64 upgrades;
        uint64 pinnedIndex;
        bool pinned;
    }

    uint256 private _nextTokenId = 1;
    mapping(uint256 tokenId => TokenState) private _states;
    mapping(uint256 tokenId => mapping(uint256 index => Revision)) private _revisions;

    /// @notice Emitted for every token upgraded, next to ERC-4906's metadata events.
    event TokenUpgraded(uint256 indexed tokenId, bytes32 indexed paymentHash, string uri);

    /// @notice The registry has no record for this payment hash.
    error ProvenanceNotFound(bytes32 paymentHash);
    /// @notice The three arrays given to {upgradeBatch} differ in length.
    error BatchLengthMismatch(uint256 tokenIds, uint256 uris, uint256 paymentHashes);
    /// @notice {upgradeBatch} was called with no tokens.
    error EmptyBatch();
    /// @notice A token URI was empty.
    error EmptyURI();
    /// @notice The admin passed to the constructor was the zero address.
    error ZeroAdmin();
    /// @notice The registry passed to the constructor has no code.
    error InvalidRegistry(address registry);
    /// @notice `index` is not a revision of `tokenId`, which has `revisions` of them (valid: 0 to revisions - 1).
    error TokenURIIndexOutOfRange(uint256 tokenId, uint256 index, uint256 revisions);
    /// @notice Only the owner of `tokenId` may pin or unpin its URI; `account` is not it.
    error NotTokenOwner(address account, uint256 tokenId);

    /// @param name_ ERC-721 name.
    /// @param symbol_ ERC-721 symbol.
    /// @param registry The ProvenanceRegistry that upgrades must link to.
    /// @param admin Account given DEFAULT_ADMIN_ROLE; it grants MINTER_ROLE and UPGRADER_ROLE.
    constructor(string memory name_, string memory symbol_, ProvenanceRegistry registry, address admin)
        ERC721(name_, symbol_)
    {
        if (admin == address(0)) revert ZeroAdmin();
        if (address(registry).code.length == 0) revert InvalidRegistry(address(registry));
        provenanceRegistry = registry;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // --- minting and upgrades --------------------------------------------------------------------------------

    /// @notice Mints the next token id (ids start at 1) to `to`; `uri` becomes its revision 0. Only MINTER_ROLE.
    /// @dev Uses _safeMint, so a contract recipient must implement IERC721Receiver. Emits Transfer only: a new
    /// token's metadata is not an update.
    /// @return tokenId The id of the new token.
    function mint(address to, string calldata uri) external onlyRole(MINTER_ROLE) returns (uint256 tokenId) {
        if (bytes(uri).length == 0) revert EmptyURI();
        tokenId = _nextTokenId++;
        // Stored before _safeMint, whose receiver hook may already read the token's URI.
        _revisions[tokenId][0].uri = uri;
        _safeMint(to, tokenId);
    }

    /// @notice Appends `newURI` as the latest revision of `tokenId` and links it to the provenance record of
    /// `paymentHash`. Only UPGRADER_ROLE. Emits {TokenUpgraded} and one ERC-4906 MetadataUpdate(tokenId).
    /// @dev A pinned token stays pinned: {tokenURI} keeps returning the owner's choice, and the new revision is
    /// listed by {tokenURIs}.
    /// @param tokenId An existing token.
    /// @param newURI The token's new metadata URI (its image is the record's output).
    /// @param paymentHash The Lightning payment hash keying the record in {provenanceRegistry}; it must exist.
    function upgrade(uint256 tokenId, string calldata newURI, bytes32 paymentHash)
        external
        onlyRole(UPGRADER_ROLE)
    {
        _upgrade(tokenId, newURI, paymentHash);
        emit MetadataUpdate(tokenId);
    }

    /// @notice Upgrades several tokens at once, each as {upgrade} does. Only UPGRADER_ROLE.
    /// @dev Token ids may come in any order. The metadata events follow the call's order: each maximal run of
    /// consecutive ascending ids (ids[i + 1] == ids[i] + 1) emits one ERC-4906 BatchMetadataUpdate(first, last),
    /// and a run of a single id emits MetadataUpdate(id); no token gets a second metadata event. So [1,2,3,7,8,10]
    /// emits BatchMetadataUpdate(1, 3), BatchMetadataUpdate(7, 8) and MetadataUpdate(10). Every token also gets its
    /// {TokenUpgraded}, emitted before its run's metadata event. An id given twice is upgraded twice.
    /// @param tokenIds Existing tokens.
    /// @param uris New metadata URI per token.
    /// @param paymentHashes Provenance record per token.
    function upgradeBatch(uint256[] calldata tokenIds, string[] calldata uris, bytes32[] calldata paymentHashes)
        external
        onlyRole(UPGRADER_ROLE)
    {
        uint256 n = tokenIds.length;
        if (n == 0) revert EmptyBatch();
        if (uris.length != n || paymentHashes.length != n) {
            revert BatchLengthMismatch(n, uris.length, paymentHashes.length);
        }
        uint256 runStart = tokenIds[0];
        for (uint256 i = 0; i < n; ++i) {
            uint256 id = tokenIds[i];
            _upgrade(id, uris[i], paymentHashes[i]);
            // The run goes on when the next id is this one plus one. `id` exists (_upgrade checked it) and ids
            // start at 1 and grow by one, so id + 1 cannot overflow.
            if (i + 1 < n && tokenIds[i + 1] == id + 1) continue;
            if (runStart == id) emit MetadataUpdate(id);
            else emit BatchMetadataUpdate(runStart, id);
            if (i + 1 < n) runStart = tokenIds[i + 1];
        }
    }

    // --- ERC-7160 --------------------------------------------------------------------------------------------

    /// @notice Every revision's URI of `tokenId`, oldest (the minted one) first; `index` is the revision
    /// {tokenURI} returns: the pinned one if `pinned`, else the latest.
    /// @dev Reverts with ERC721NonexistentToken when the token does not exist.
    function tokenURIs(uint256 tokenId) external view returns (uint256 index, string[] memory uris, bool pinned) {
        _requireOwned(tokenId);
        TokenState memory state = _states[tokenId];
        mapping(uint256 => Revision) storage revisions = _revisions[tokenId];
        uris = new string[](uint256(state.upgrades) + 1);
        for (uint256 i = 0; i < uris.length; ++i) {
            uris[i] = revisions[i].uri;
        }
        return (_displayedIndex(state), uris, state.pinned);
    }

    /// @notice Pins revision `index` of `tokenId`: {tokenURI} returns it until the owner unpins or pins another,
    /// whatever upgrades come meanwhile. Only the token's owner (approved operators and every role, the admin
    /// included, are refused). Emits {TokenUriPinned} and ERC-4906 MetadataUpdate(tokenId).
    /// @dev Reverts with ERC721NonexistentToken, {NotTokenOwner} or {TokenURIIndexOutOfRange}. Pinning the pinned
    /// index again succeeds and emits the same events. The pin belongs to the token: it survives a transfer, and
    /// the new owner may unpin it.
    function pinTokenURI(uint256 tokenId, uint256 index) external {
        _checkTokenOwner(tokenId);
        TokenState storage state = _states[tokenId];
        uint256 revisions = uint256(state.upgrades) + 1;
        if (index >= revisions) revert TokenURIIndexOutOfRange(tokenId, index, revisions);
        state.pinnedIndex = uint64(index); // index < revisions <= 2**64
        state.pinned = true;
        emit TokenUriPinned(tokenId, index);
        emit MetadataUpdate(tokenId);
    }

    /// @notice Drops the pin of `tokenId`, so {tokenURI} returns the latest revision again. Only the token's
    /// owner. Emits {TokenUriUnpinned} and ERC-4906 MetadataUpdate(tokenId).
    /// @dev Reverts with ERC721NonexistentToken or {NotTokenOwner}. Unpinning a token that has no pin succeeds and
    /// emits the same events (ERC-7160 leaves unpinning open; idempotent is what a marketplace can call safely).
    function unpinTokenURI(uint256 tokenId) external {
        _checkTokenOwner(tokenId);
        TokenState storage state = _states[tokenId];
        state.pinnedIndex = 0;
        state.pinned = false;
        emit TokenUriUnpinned(tokenId);
        emit MetadataUpdate(tokenId);
    }

    /// @notice Whether the owner of `tokenId` pinned one of its revisions. Reverts when the token does not exist.
    function hasPinnedTokenURI(uint256 tokenId) external view returns (bool pinned) {
        _requireOwned(tokenId);
        return _states[tokenId].pinned;
    }

    // --- reads -----------------------------------------------------------------------------------------------

    /// @notice The pinned revision's URI of `tokenId` if its owner pinned one, else its latest revision's URI.
    function tokenURI(uint256 tokenId) public view override returns (string memory) {
        _requireOwned(tokenId);
        return _revisions[tokenId][_displayedIndex(_states[tokenId])].uri;
    }

    /// @notice The payment hash of the provenance record `tokenId` was last upgraded with (its latest revision's,
    /// pinned or not); zero if never upgraded.
    function provenanceOf(uint256 tokenId) external view returns (bytes32) {
        _requireOwned(tokenId);
        return _revisions[tokenId][_states[tokenId].upgrades].paymentHash;
    }

    /// @notice The payment hash of the provenance record of revision `index` of `tokenId`; zero for revision 0
    /// (the minted URI). Reverts with {TokenURIIndexOutOfRange} past the latest revision.
    function provenanceOfRevision(uint256 tokenId, uint256 index) external view returns (bytes32) {
        _requireOwned(tokenId);
        uint256 revisions = uint256(_states[tokenId].upgrades) + 1;
        if (index >= revisions) revert TokenURIIndexOutOfRange(tokenId, index, revisions);
        return _revisions[tokenId][index].paymentHash;
    }

    /// @notice ERC-165: reports ERC-721, ERC-721 Metadata, ERC-4906 (0x49064906), ERC-7160 (0x06e1bc5b),
    /// AccessControl and ERC-165 itself.
    function supportsInterface(bytes4 interfaceId)
        public
        view
        override(IERC165, ERC721, AccessControl)
        returns (bool)
    {
        return interfaceId == ERC4906_INTERFACE_ID || interfaceId == type(IERC7160).interfaceId
            || super.supportsInterface(interfaceId);
    }

    // --- internals -------------------------------------------------------------------------------------------

    function _upgrade(uint256 tokenId, string calldata newURI, bytes32 paymentHash) private {
        _requireOwned(tokenId);
        if (bytes(newURI).length == 0) revert EmptyURI();
        // A view call to the immutable registry: a staticcall, so no reentrancy.
        if (!provenanceRegistry.exists(paymentHash)) revert ProvenanceNotFound(paymentHash);
        TokenState storage state = _states[tokenId];
        uint64 index = state.upgrades + 1;
        Revision storage revision = _revisions[tokenId][index];
        revision.uri = newURI;
        revision.paymentHash = paymentHash;
        state.upgrades = index;
        emit TokenUpgraded(tokenId, paymentHash, newURI);
    }

    function _checkTokenOwner(uint256 tokenId) private view {
        address owner = _requireOwned(tokenId);
        if (_msgSender() != owner) revert NotTokenOwner(_msgSender(), tokenId);
    }

    function _displayedIndex(TokenState memory state) private pure returns (uint256) {
        return state.pinned ? state.pinnedIndex : state.upgrades;
    }
}
